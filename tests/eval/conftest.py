"""Fixtures for the eval tests; the stand-in model and data live in _eval_helpers."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import TinyCausalLM, build_real_gpt, make_tables  # noqa: E402


@pytest.fixture
def tiny_model() -> TinyCausalLM:
    return TinyCausalLM()


@pytest.fixture
def tables():
    return make_tables()


@pytest.fixture
def real_gpt():
    return build_real_gpt()


@pytest.fixture(autouse=True)
def _eval_single_thread():
    # Tiny ops: thread hand-off costs more than it saves, and one thread is deterministic.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
