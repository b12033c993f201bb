"""Import a record's own train_gpt.py on CPU, unmodified, for side-by-side checks.

The record's script is never copied into pgolf: the caller passes the path of a checkout of
the public challenge repository (--record-script). The script imports FlashAttention-3, which
has no CPU build, so a stand-in module `flash_attn_interface` is registered first: plain causal
SDPA for the dense call and one SDPA per segment for the varlen call (GQA by repeating KV
heads). Its hyper-parameters are class attributes read from the environment at import time, so
`env` is applied before the import and restored afterwards.
"""

import importlib.util
import os
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F


def _sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B,T,H,D], k/v [B,T,Hkv,D] -> [B,T,H,D], causal."""
    rep = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return y.transpose(1, 2)


def flash_attn_func(q, k, v, causal=True, **_):
    if not causal:
        raise NotImplementedError("the stand-in only does causal attention")
    return _sdpa_causal(q, k, v)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=0, max_seqlen_k=0,
                           causal=True, window_size=(-1, -1), **_):
    """q [T,H,D]: causal attention inside each [cu[i], cu[i+1]) segment (repeated ends are empty)."""
    out = torch.zeros_like(q)
    cu = cu_seqlens_q.tolist()
    for a, b in zip(cu[:-1], cu[1:]):
        if b > a:
            out[a:b] = _sdpa_causal(q[None, a:b], k[None, a:b], v[None, a:b])[0]
    return out


def install_flash_stub() -> None:
    mod = types.ModuleType("flash_attn_interface")
    mod.flash_attn_func = flash_attn_func
    mod.flash_attn_varlen_func = flash_attn_varlen_func
    sys.modules["flash_attn_interface"] = mod


def import_record(script: str | os.PathLike, env: dict[str, str] | None = None, name: str = "record_script"):
    """The record's train_gpt.py as a module (SDPA in place of FA3, torch.compile off)."""
    path = Path(script)
    if not path.is_file():
        raise SystemExit(f"--record-script {path}: no such file; pass the record's train_gpt.py from a "
                         "checkout of the public challenge repository")
    install_flash_stub()
    # The record decorates Newton-Schulz with @torch.compile; on CPU that only costs time.
    import torch._dynamo
    torch._dynamo.config.disable = True
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return mod
