"""Where the kernel tests run: a CUDA device, else Triton's CPU interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported). A module that can do neither is skipped, saying why."""

import os

import pytest
import torch


def kernel_device() -> str:
    """"cuda" or "cpu" (the interpreter); skips the calling test module when triton cannot run."""
    pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]')")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1 (tests/conftest.py sets it before triton "
                    "is imported; this session imported triton first)", allow_module_level=True)
    return "cuda" if torch.cuda.is_available() else "cpu"
