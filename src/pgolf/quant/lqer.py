"""LQER: a low-rank correction of the quantization error (#1855: rank 4 on the top 3 tensors).

For a quantized matrix W ~ Wq, the error E = W - Wq is factored by SVD as A @ B, and the
reader adds the de-quantized A @ B back to Wq. The factors are ordinary int entries of the
artifact (names `<tensor>.lqer_a` / `.lqer_b`); their method says how they are laid out
(quant.lqer_format):
  lqer       pgolf: A = U S^1/2, B = S^1/2 V^T (float64 SVD), A^T [r, rows] and B [r, cols]
             per-row at lqer_bits, scale max|row| / qmax floored at the smallest fp16 normal
             (the reference's 1/qmax floor exceeds every factor entry and zeroes them all)
  lqer_sym   #1855's fallback: A = U S, B = V^T (float32 SVD), A [rows, r] and B [r, cols]
             per-row, scale max|row| / (2^(bits-1)-1)
  lqer_asym  #1855's asymmetric pair: A's codes in [-2, 1] with one scale max|A| / 1.5 (stored
             as one row [1, rows*r]), B's codes in [-8, 7] in groups of g over the flattened
             factor, scale max|group| / 7.5 (stored as [r*cols/g, g]); the entries declare the
             symmetric widths that hold those codes (3 and 5 bits) so bit-packing stays exact
Old readers of the format never meet these names: only artifacts written with
quant.lqer_rank > 0 hold them.
"""

import math
from typing import Any

import torch
from torch import Tensor

from pgolf.quant.quantizers import (QUANT_FP16_TINY, QuantError, dequantize_rows, peak_grid_codes, quant_row_view,
                                    quantize_rows)

LQER_SUFFIXES: tuple[str, str] = (".lqer_a", ".lqer_b")
LQER_METHODS: tuple[str, ...] = ("lqer", "lqer_sym", "lqer_asym")
# Widths declared by the asym entries: int3's +-3 holds A's [-2, 1], int5's +-15 holds B's [-8, 7].
_ASYM_BITS = (3, 5)


def lqer_factors(err: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-r factors (A, B) of a 2-D error matrix, A @ B ~ err (float32), split evenly."""
    e = quant_row_view(err).double()
    r = min(rank, *e.shape)
    if r < 1:
        raise QuantError(f"quant.lqer_rank={rank}: use >= 1 (0 turns LQER off)")
    u, s, vh = torch.linalg.svd(e, full_matrices=False)
    root = s[:r].sqrt()
    return (u[:, :r] * root).float(), (root.unsqueeze(1) * vh[:r]).float()


def lqer_record_factors(err: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """#1855's factors: float32 SVD, A = U S (the singular values on A), B = V^T."""
    e = quant_row_view(err)
    if rank < 1:
        raise QuantError(f"quant.lqer_rank={rank}: use >= 1 (0 turns LQER off)")
    u, s, vh = torch.linalg.svd(e, full_matrices=False)
    r = min(rank, s.numel())
    return (u[:, :r] * s[:r]).contiguous(), vh[:r, :].contiguous()


def _factor_entry(q: Tensor, s: Tensor, bits: int, method: str) -> dict[str, Any]:
    return {"kind": "int", "bits": bits, "method": method, "q": q, "scale": s, "clips": [1.0],
            "category": "lqer", "shape": list(q.shape), "dtype": "float32"}


def lqer_entries(name: str, err: Tensor, rank: int, bits: int, fmt: str = "pgolf",
                 group: int = 64) -> dict[str, dict[str, Any]]:
    """Quantized factor entries of one tensor's error, ready for the artifact payload."""
    na, nb = (name + s for s in LQER_SUFFIXES)
    if fmt == "pgolf":
        a, b = lqer_factors(err, rank)
        qa, sa = quantize_rows(a.T.contiguous(), bits, 1.0, floor=QUANT_FP16_TINY)
        qb, sb = quantize_rows(b, bits, 1.0, floor=QUANT_FP16_TINY)
        return {na: _factor_entry(qa, sa, bits, "lqer"), nb: _factor_entry(qb, sb, bits, "lqer")}
    if fmt not in ("sym", "asym"):
        raise QuantError(f"quant.lqer_format={fmt!r}; use pgolf, sym or asym")
    a, b = lqer_record_factors(err, rank)
    if fmt == "asym" and group >= 1 and b.numel() % group == 0:
        qa, sa = peak_grid_codes(a.reshape(1, -1), 1.5, -2, 1)
        qb, sb = peak_grid_codes(b.reshape(-1, group), 7.5, -8, 7)
        return {na: _factor_entry(qa, sa, _ASYM_BITS[0], "lqer_asym"),
                nb: _factor_entry(qb, sb, _ASYM_BITS[1], "lqer_asym")}
    rng = (1 << (bits - 1)) - 1
    qa, sa = peak_grid_codes(a, rng, -rng, rng)
    qb, sb = peak_grid_codes(b, rng, -rng, rng)
    return {na: _factor_entry(qa, sa, bits, "lqer_sym"), nb: _factor_entry(qb, sb, bits, "lqer_sym")}


def lqer_correction(payload: dict[str, dict[str, Any]], name: str) -> Tensor | None:
    """A @ B of a tensor's stored factors ([rows, cols] float32), or None when it has none.

    The factors' layout must fit the tensor's shape (payload[name], needed by asym factors)
    and their rank may not exceed min(rows, cols), so a crafted artifact cannot ask for an
    outsized product."""
    ea, eb = (payload.get(name + s) for s in LQER_SUFFIXES)
    if ea is None or eb is None:
        return None
    method = ea.get("method")
    if method not in LQER_METHODS or eb.get("method") != method or ea["kind"] != "int" or eb["kind"] != "int":
        raise QuantError(f"LQER factors of {name} have methods {method!r} / {eb.get('method')!r}")
    a, b = dequantize_rows(ea["q"], ea["scale"]), dequantize_rows(eb["q"], eb["scale"])
    if method == "lqer":
        a = a.T
    target = payload.get(name)
    if target is not None:
        shape = target["shape"]
        rows, cols = (math.prod(shape[:-1]), shape[-1]) if len(shape) >= 2 else (-1, -1)
    elif method != "lqer_asym":
        rows, cols = a.shape[0], b.shape[-1]
    else:
        raise QuantError(f"LQER factors of {name} need the tensor they correct")
    if rows < 1 or cols < 1 or a.numel() % rows or b.numel() % cols:
        raise QuantError(f"LQER factors of {name} do not fit its shape")
    r = a.numel() // rows
    if not 1 <= r <= min(rows, cols) or b.numel() != r * cols:
        raise QuantError(f"LQER factors of {name} do not fit its shape (rank {r})")
    return a.reshape(rows, r) @ b.reshape(r, cols)


def is_lqer_name(name: str) -> bool:
    return name.endswith(LQER_SUFFIXES)


def pick_lqer_targets(errors: dict[str, float], top_k: int) -> list[str]:
    """The top_k names by error (ties broken by name, so the choice is deterministic)."""
    ranked = sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))
    return [n for n, e in ranked[:max(top_k, 0)] if e > 0]
