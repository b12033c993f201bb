"""LQER: a low-rank correction of the quantization error (#1855: rank 4 on the top 3 tensors).

For a quantized matrix W ~ Wq, the error E = W - Wq is factored by SVD as A @ B
(A [rows, r] = U S^1/2, B [r, cols] = S^1/2 V^T); A^T and B, both r rows long, are stored as
per-row int entries of the artifact (names `<tensor>.lqer_a` / `.lqer_b`, method "lqer"), so
the factors cost 2r fp16 scales, and the reader adds A @ B back to Wq. Old readers of the format never meet these names: only artifacts
written with quant.lqer_rank > 0 hold them.
"""

from typing import Any

import torch
from torch import Tensor

from pgolf.quant.quantizers import QuantError, dequantize_rows, quant_row_view, quantize_rows

LQER_SUFFIXES: tuple[str, str] = (".lqer_a", ".lqer_b")


def lqer_factors(err: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-r factors (A, B) of a 2-D error matrix, A @ B ~ err (float32)."""
    e = quant_row_view(err).double()
    r = min(rank, *e.shape)
    if r < 1:
        raise QuantError(f"quant.lqer_rank={rank}: use >= 1 (0 turns LQER off)")
    u, s, vh = torch.linalg.svd(e, full_matrices=False)
    root = s[:r].sqrt()
    return (u[:, :r] * root).float(), (root.unsqueeze(1) * vh[:r]).float()


def lqer_entries(name: str, err: Tensor, rank: int, bits: int) -> dict[str, dict[str, Any]]:
    """Quantized factor entries of one tensor's error, ready for the artifact payload."""
    a, b = lqer_factors(err, rank)
    out = {}
    for suffix, f in zip(LQER_SUFFIXES, (a.T.contiguous(), b)):
        q, s = quantize_rows(f, bits, 1.0)
        out[name + suffix] = {"kind": "int", "bits": bits, "method": "lqer", "q": q, "scale": s,
                              "clips": [1.0], "category": "lqer", "shape": list(f.shape), "dtype": "float32"}
    return out


def lqer_correction(payload: dict[str, dict[str, Any]], name: str) -> Tensor | None:
    """A @ B of a tensor's stored factors, or None when it has none."""
    ea, eb = (payload.get(name + s) for s in LQER_SUFFIXES)
    if ea is None or eb is None:
        return None
    return dequantize_rows(ea["q"], ea["scale"]).T @ dequantize_rows(eb["q"], eb["scale"])


def is_lqer_name(name: str) -> bool:
    return name.endswith(LQER_SUFFIXES)


def pick_lqer_targets(errors: dict[str, float], top_k: int) -> list[str]:
    """The top_k names by error (ties broken by name, so the choice is deterministic)."""
    ranked = sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))
    return [n for n, e in ranked[:max(top_k, 0)] if e > 0]
