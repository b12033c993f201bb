"""When a Triton kernel can run on a tensor: a CUDA tensor with triton importable, or any
tensor under TRITON_INTERPRET=1 (Triton's CPU interpreter, which the tests use)."""

import importlib.util
import os

import torch


def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_runs_on(t: torch.Tensor) -> bool:
    if not triton_importable():
        return False
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
