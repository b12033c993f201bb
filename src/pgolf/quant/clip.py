"""Per-row clip rules: which |w| each row's grid reaches before codes saturate.

  quantile  the GPTQ-lite search: each candidate is a per-row |w| quantile; the one with the
            lowest reconstruction error wins (per matrix or per row).
  sdclip    clip = k x row std (#1394: k ~ 12.85 for matrices, ~ 20 for embeddings). A clip far
            above the row max leaves the outer codes unused, so LZMA sees a narrow alphabet:
            the rule trades rounding error for bytes, and GPTQ's error feedback wins much of
            the error back.
Hessian-weighted variants (a calibration Hessian H of the layer input, [cols, cols]) score an
error E by tr(E H E^T), the layer-output error, instead of |E|^2; SDClip then measures each
row's spread with the weights diag(H), so columns the inputs never excite do not widen it.
"""

import torch
from torch import Tensor

from pgolf.quant.quantizers import (QuantError, quant_codes, quant_qmax, quant_row_view, quant_scale_from_clip,
                                    row_abs_quantiles)


def sdclip_values(w: Tensor, k: float, hdiag: Tensor | None = None, unbiased: bool = False) -> Tensor:
    """Per-row clip k x std of the row ([rows]); std weighted by hdiag ([cols]) when given;
    unbiased divides the plain variance by n - 1 (#1855's torch.std) instead of n."""
    if not k > 0:
        raise QuantError(f"SDClip k must be > 0, got {k}")
    w2 = quant_row_view(w)
    if hdiag is None:
        return k * w2.std(dim=1, unbiased=unbiased)
    p = hdiag.float().clamp_min(0)
    p = p / p.sum().clamp_min(1e-30)
    mean = w2 @ p
    var = ((w2 - mean.unsqueeze(1)).pow(2) @ p).clamp_min(0)
    if unbiased:
        # Kish's effective sample size: n - 1 when the weights are uniform.
        n_eff = 1.0 / float(p.pow(2).sum().clamp_min(1e-30))
        var = var * (n_eff / max(n_eff - 1.0, 1e-12))
    return k * var.sqrt()


def weighted_row_errors(w2: Tensor, dq: Tensor, hessian: Tensor | None) -> Tensor:
    """Per-row error of a reconstruction: |e|^2, or e H e^T with the input Hessian."""
    e = dq - w2
    if hessian is None:
        return e.pow(2).sum(dim=1)
    return ((e @ hessian.float()) * e).sum(dim=1)


def clip_candidates(w2: Tensor, rule: str, k: float, hdiag: Tensor | None,
                    quantiles: tuple[float, ...], unbiased: bool = False) -> Tensor:
    """[n, rows] candidate clips of a rule: the quantiles, or SDClip's single k x std."""
    if rule == "quantile":
        return row_abs_quantiles(w2, quantiles)
    if rule == "sdclip":
        return sdclip_values(w2, k, hdiag, unbiased).unsqueeze(0)
    raise QuantError(f"quant.clip_rule={rule!r}; use quantile or sdclip")


def choose_row_scales(w: Tensor, bits: int, rule: str, k: float = 12.85, hessian: Tensor | None = None,
                      search: str = "matrix", quantiles: tuple[float, ...] = (1.0,),
                      floor: float | None = None, unbiased: bool = False) -> Tensor:
    """fp16-representable per-row scales (float32 [rows]) of the rule's best candidate;
    floor: the smallest scale (None = the reference's 1/qmax); unbiased: SDClip's std kind.

    With one candidate (SDClip) there is nothing to search; with several, `search` picks one
    for the whole matrix or one per row by (Hessian-weighted, when given) rounding error.
    """
    qmax = quant_qmax(bits)
    w2 = quant_row_view(w)
    hdiag = None if hessian is None else torch.diagonal(hessian).float()
    scales = quant_scale_from_clip(clip_candidates(w2, rule, k, hdiag, tuple(quantiles), unbiased), qmax, floor)
    if scales.shape[0] == 1:
        return scales[0]
    errs = torch.stack([weighted_row_errors(w2, quant_codes(w2, s, qmax) * s.unsqueeze(1), hessian)
                        for s in scales])
    if search == "matrix":
        return scales[int(torch.argmin(errs.sum(dim=1)))]
    if search != "row":
        raise QuantError(f"clip_search must be 'matrix' or 'row', got {search!r}")
    pick = torch.argmin(errs, dim=0)
    return scales[pick, torch.arange(w2.shape[0])]
