"""The one place that decides hardware and precision: device, compute dtype, attention
kernel, compilation, fused optimizer kernels, pinned host memory, device syncs.

Everything else asks this module instead of probing for itself, so switching a policy
(say, bf16 on CPU, or FA3 off) is one edit here. Optional kernels are imported lazily
with a fallback (the bundled train_gpt.py must run where they are absent).
"""

import torch

ATTENTION_BACKENDS = ("auto", "fa3", "sdpa", "math")


def compute_autocast(device: torch.device):
    """bf16 compute over fp32 weights on GPUs; plain fp32 on CPU, where bf16 matmuls are
    slow and tests want exactness."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def fa3_function():
    """FlashAttention-3's `flash_attn_func` when installed (Hopper only), else None."""
    try:
        from flash_attn_interface import flash_attn_func  # optional Hopper kernel
    except ImportError:
        return None
    return flash_attn_func


def resolve_attention_backend(requested: str, device: torch.device) -> str:
    """The backend actually used: fa3 only when importable on a Hopper GPU, else SDPA."""
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(f"model.attn_backend must be one of {ATTENTION_BACKENDS}, got {requested!r}")
    hopper = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9
    if requested in ("auto", "fa3") and hopper and fa3_function() is not None:
        return "fa3"
    return "sdpa" if requested in ("auto", "fa3") else requested


def maybe_compile(fn, enabled: bool):
    """torch.compile as the record does it (static shapes, one graph) when enabled."""
    return torch.compile(fn, dynamic=False, fullgraph=True) if enabled else fn


def fused_adamw(params) -> bool:
    """The fused AdamW kernel exists for CUDA tensors only."""
    return all(p.is_cuda for p in params)


def pinned_staging(device: torch.device) -> bool:
    """Stage host batches in pinned memory: only pays off for copies to a GPU."""
    return device.type == "cuda"


def device_sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU, where work is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
