"""Shared fixtures: the embedded corpus (prepared once per session) and shared-data paths."""

import os
import sys
from pathlib import Path

import pytest
import torch

# tests/kernels run pgolf's Triton kernels through Triton's CPU interpreter, which must be
# chosen before triton is first imported; on a CUDA machine they compile as in training.
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SHARED_TOKENIZER = SHARED / "tokenizers" / "fineweb_1024_bpe.model"


@pytest.fixture(scope="session")
def embedded_corpus(tmp_path_factory):
    from pgolf.data.corpus import prepare_embedded_corpus
    return prepare_embedded_corpus(str(tmp_path_factory.mktemp("pgolf_cache")), log=lambda *_: None)


@pytest.fixture(scope="session")
def shared_tokenizer():
    if not SHARED_TOKENIZER.is_file():
        pytest.skip(f"shared tokenizer absent: {SHARED_TOKENIZER} (the challenge's fineweb_1024_bpe.model)")
    return str(SHARED_TOKENIZER)
