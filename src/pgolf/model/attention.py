"""Causal GQA attention: q/k RMS norm, partial RoPE, per-head q gain, XSA, backends.

The attention is written as a function of its weights so the same code serves per-layer
weights (baseline) and slices of parameter banks (record).
"""

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.hw import fa3_function, fa3_varlen_function


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def ntk_rope_base(base: float, rope_dims: int, seq_len: int, train_len: int) -> float:
    """RoPE base stretched as if the model had been trained at `train_len` (NTK-aware).

    The record computes its base this way: at 2048 tokens with train_len 1024 and 16
    rotated dims, 10000 becomes ~22,081.
    """
    if train_len <= 0 or seq_len <= train_len or rope_dims <= 2:
        return base
    return base * (seq_len / train_len) ** (rope_dims / (rope_dims - 2))


class Rotary(nn.Module):
    """cos/sin tables for the first `rope_dims` dims of each head, cached per length."""

    def __init__(self, head_dim: int, rope_dims: int, base: float, train_len: int,
                 precision: str = "fp64") -> None:
        super().__init__()
        self.rope_dims = rope_dims or head_dim
        self.base = base
        self.train_len = train_len
        self.precision = precision  # model.rope_precision
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype):
        key = (seq_len, device, dtype)
        if key not in self._cache:
            # Built outside inference mode: a table first made during evaluation must still
            # be usable by a later backward pass (training, TTT).
            with torch.inference_mode(False), torch.no_grad():
                self._cache[key] = self._tables(seq_len, device, dtype)
        return self._cache[key]

    def _tables(self, seq_len: int, device: torch.device, dtype: torch.dtype):
        rd = self.rope_dims
        base = ntk_rope_base(self.base, rd, seq_len, self.train_len)
        if self.precision != "fp64":
            return self._tables_fp32(base, seq_len, device, dtype)
        inv_freq = 1.0 / (base ** (torch.arange(0, rd, 2, dtype=torch.float64, device=device) / rd))
        t = torch.arange(seq_len, dtype=torch.float64, device=device)
        freqs = torch.outer(t, inv_freq)
        # Shaped [1, T, 1, rd/2] to broadcast over [B, T, H, rd/2].
        return (freqs.cos()[None, :, None, :].to(dtype), freqs.sin()[None, :, None, :].to(dtype))


    def _tables_fp32(self, base: float, seq_len: int, device: torch.device, dtype: torch.dtype):
        """#1855's tables: frequencies made in fp32 on the CPU (where its model is built), angles
        and cos/sin in fp32 on the device; "bf16_freq" also rounds the frequencies to bf16, as the
        record's cast of the whole model to bf16 does to its frequency buffer."""
        rd = self.rope_dims
        inv_freq = 1.0 / base ** (torch.arange(0, rd, 2, dtype=torch.float32) / rd)
        if self.precision == "bf16_freq":
            inv_freq = inv_freq.to(torch.bfloat16).float()
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq.to(device))
        return (freqs.cos()[None, :, None, :].to(dtype), freqs.sin()[None, :, None, :].to(dtype))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2*cos.size(-1) dims of x [B, T, H, D]; the rest pass through."""
    half = cos.size(-1)
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    y1 = x1 * cos + x2 * sin
    y2 = x2 * cos - x1 * sin
    return torch.cat((y1, y2, rest), dim=-1)


def xsa_remove_self_value(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exclusive self-attention: drop from each head's output its component along the
    token's own unit value vector. y [B,T,H,D], v [B,T,Hkv,D]; GQA without repeating v."""
    b, t, h, d = y.shape
    hkv = v.size(2)
    yg = y.view(b, t, hkv, h // hkv, d)
    vn = F.normalize(v, dim=-1).unsqueeze(3)
    yg = yg - (yg * vn).sum(dim=-1, keepdim=True) * vn
    return yg.view(b, t, h, d)


class DocLayout(NamedTuple):
    """Where documents start in a batch, in the form the chosen kernel wants: a same-document
    causal mask [B,1,T,T] (SDPA/math) or cu_seqlens over the flattened batch (FA3 varlen)."""
    mask: torch.Tensor | None
    cu_seqlens: torch.Tensor | None
    max_seqlen: int


def document_ids(ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """[B,T] running document index: +1 at every BOS, so tokens before a row's first BOS share
    one (cut-off) document."""
    return (ids == bos_id).to(torch.int32).cumsum(dim=1)


def segment_starts(ids: torch.Tensor, bos_id: int, max_len: int) -> torch.Tensor:
    """[B,T] bool: where attention segments begin. A segment starts at every BOS, at each row's
    first token, and every max_len tokens after either (a long document is cut into pieces
    counted from its start, or from the row's start when it began in an earlier row)."""
    starts = ids == bos_id
    starts[:, 0] = True
    if max_len > 0:
        pos = torch.arange(ids.size(1), device=ids.device).expand_as(ids)
        doc_start = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
        starts = starts | ((pos - doc_start) % max_len == 0)
    return starts


def doc_layout(ids: torch.Tensor, bos_id: int, kernel: str, max_len: int = 0) -> DocLayout:
    """Computed once per forward and shared by every layer. Depends on tokens <= t only for the
    rows/columns of position t, so causality holds. max_len > 0 also cuts documents every
    max_len tokens (segment_starts)."""
    starts = segment_starts(ids, bos_id, max_len) if max_len > 0 else ids == bos_id
    return segment_layout(starts, kernel, max_len)


def segment_layout(starts: torch.Tensor, kernel: str, max_len: int = 0) -> DocLayout:
    """DocLayout of segments that begin where starts [B,T] (bool) is True; a row always begins one.
    max_len > 0 (no segment is longer) pads cu_seqlens to a multiple of 64 entries."""
    b, t = starts.shape
    if kernel == "varlen":
        starts = starts.clone()
        starts[:, 0] = True  # each row is its own sequence: no document spans two rows
        flat = starts.reshape(-1).nonzero().flatten().to(torch.int32)
        # Cut documents pad cu_seqlens to a multiple of 64 entries with empty segments, as the
        # record's stream batches do, so a compiled kernel meets few distinct lengths.
        pad = (-(flat.numel() + 1)) % 64 if max_len > 0 else 0
        end = torch.full((1 + pad,), b * t, dtype=torch.int32, device=starts.device)
        # T bounds every segment, which spares the device->host sync of computing the true max.
        return DocLayout(None, torch.cat((flat, end)), min(t, max_len) if max_len > 0 else t)
    docs = starts.to(torch.int32).cumsum(dim=1)
    causal = torch.ones(t, t, dtype=torch.bool, device=starts.device).tril()
    same = docs[:, :, None] == docs[:, None, :]
    return DocLayout((same & causal)[:, None], None, t)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: DocLayout) -> torch.Tensor:
    """FA3 over packed documents (#1530's training form): the batch flattened into one stream."""
    b, t, h, d = q.shape
    dt = v.dtype if v.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    out = fa3_varlen_function()(
        q.reshape(b * t, h, d).to(dt), k.reshape(b * t, k.size(2), d).to(dt),
        v.reshape(b * t, v.size(2), d).to(dt), cu_seqlens_q=docs.cu_seqlens, cu_seqlens_k=docs.cu_seqlens,
        max_seqlen_q=docs.max_seqlen, max_seqlen_k=docs.max_seqlen, causal=True)
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(b, t, h, d).to(q.dtype)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     backend: str) -> torch.Tensor:
    """Attention under an explicit boolean mask [B,1,T,T] (True = may attend)."""
    rep = q.size(2) // k.size(2)
    # K/V expanded: no fused kernel takes a mask together with GQA on every device.
    qt = q.transpose(1, 2)
    kt, vt = (z.transpose(1, 2).repeat_interleave(rep, dim=1) for z in (k, v))
    if backend == "math":
        scores = (qt @ kt.transpose(-1, -2)) / math.sqrt(q.size(-1))
        return (scores.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ vt).transpose(1, 2)
    return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask).transpose(1, 2)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str,
                     docs: DocLayout | None = None) -> torch.Tensor:
    """q [B,T,H,D], k/v [B,T,Hkv,D] -> [B,T,H,D], causal (and within documents when `docs`)."""
    if docs is not None:
        if docs.cu_seqlens is not None:
            return varlen_attention(q, k, v, docs)
        return masked_attention(q, k, v, docs.mask, backend)
    if backend == "fa3":
        # FA3 takes bf16/fp16 only and autocast does not manage this custom op: under CUDA
        # autocast the q/k RMS norm may hand it fp32 beside a bf16 v.
        dt = v.dtype if v.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        out = fa3_function()(q.to(dt), k.to(dt), v.to(dt), causal=True)
        out = out[0] if isinstance(out, tuple) else out
        return out.to(q.dtype)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if backend == "math":
        rep = q.size(2) // k.size(2)
        kt, vt = kt.repeat_interleave(rep, dim=1), vt.repeat_interleave(rep, dim=1)
        scores = (qt @ kt.transpose(-1, -2)) / math.sqrt(q.size(-1))
        t = q.size(1)
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        return (scores.softmax(dim=-1) @ vt).transpose(1, 2)
    gqa = k.size(2) != q.size(2)
    if gqa and q.is_cuda and q.dtype == torch.float32:
        # No fused CUDA kernel takes fp32 with enable_gqa (it silently falls back to the
        # O(T^2)-memory math path); expanded K/V keep the memory-efficient kernel.
        rep = q.size(2) // k.size(2)
        kt, vt, gqa = kt.repeat_interleave(rep, dim=1), vt.repeat_interleave(rep, dim=1), False
    out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=gqa)
    return out.transpose(1, 2)


def head_gate(kind: str, x: torch.Tensor, w: torch.Tensor, window: int, scale: float) -> torch.Tensor:
    """Per-head multiplier [B,T,H] of the attention output, read from the attention input x."""
    if kind == "dense":
        return torch.sigmoid(F.linear(x, w.to(x.dtype)))
    z = F.linear(x[..., :window], w.to(x.dtype))
    # out: 2*sigmoid so a zero weight is exactly neutral (#1667); sparse: #1787's scaled gate.
    return 2.0 * torch.sigmoid(z) if kind == "out" else torch.sigmoid(scale * z)


class Attention(nn.Module):
    """Holds the per-head q gain, the optional output gate (and the weights themselves when
    not banked)."""

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, qk_gain_init: float,
                 own_weights: bool, gate: str = "off", gate_window: int = 12, gate_scale: float = 1.0,
                 gate_init_std: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        kv_dim = self.head_dim * num_kv_heads
        self.q_gain = nn.Parameter(torch.full((num_heads,), qk_gain_init))
        self.gate, self.gate_window, self.gate_scale = gate, gate_window, gate_scale
        if gate != "off":
            # Named as in the record scripts, so their weights load without a mapping.
            width = dim if gate == "dense" else gate_window
            self.attn_gate_w = nn.Parameter(torch.randn(num_heads, width) * gate_init_std)
        if own_weights:
            self.c_q = nn.Linear(dim, dim, bias=False)
            self.c_k = nn.Linear(dim, kv_dim, bias=False)
            self.c_v = nn.Linear(dim, kv_dim, bias=False)
            self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                wo: torch.Tensor, rotary: Rotary, backend: str, xsa: bool,
                v_extra: torch.Tensor | None = None, docs: DocLayout | None = None,
                side: Callable | None = None) -> torch.Tensor:
        """side(point, x), when given, returns an addition to projection q, k, v or o (or None)."""
        b, t, c = x.shape
        h, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = F.linear(x, wq.to(x.dtype)), F.linear(x, wk.to(x.dtype)), F.linear(x, wv.to(x.dtype))
        if side is not None:
            q, k, v = (_plus(z, side(name, x)) for name, z in (("q", q), ("k", k), ("v", v)))
        if v_extra is not None:
            v = v + v_extra.to(v.dtype)
        q, k, v = q.view(b, t, h, d), k.view(b, t, hkv, d), v.view(b, t, hkv, d)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = rotary(t, x.device, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, None, :, None]
        y = causal_attention(q, k, v, backend, docs)
        if xsa:
            y = xsa_remove_self_value(y, v)
        if self.gate != "off":
            y = y * head_gate(self.gate, x, self.attn_gate_w, self.gate_window, self.gate_scale)[..., None]
        out = F.linear(y.reshape(b, t, c), wo.to(x.dtype))
        return out if side is None else _plus(out, side("o", x))


def _plus(z: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    return z if extra is None else z + extra.to(z.dtype)
