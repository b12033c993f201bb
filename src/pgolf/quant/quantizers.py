"""Per-row symmetric integer quantizers (the artifact's grid) and the GPTQ-lite clip search.

The grid, shared by the artifact and late QAT (pgolf.quant.fake_quant):
    qmax  = 2**(bits-1) - 1                       (31 for int6, 127 for int8)
    scale = fp16(max(clip / qmax, 1 / qmax))      per row; clip = a per-row |w| quantile
    q     = clamp(round(w / scale), -qmax, qmax)  round half to even (torch.round)
    w'    = q * scale
The 1/qmax floor and the fp16 rounding of the scale are the reference's; q is computed
with the fp16-rounded scale so that quantize -> dequantize and fake quantization agree
exactly. A 2-D+ tensor's rows are all dims but the last (banks [n, rows, cols] included).
"""

import torch
from torch import Tensor

from pgolf.errors import PgolfError

# Candidate clip quantiles of the reference GPTQ-lite search (1.0 = row max).
GPTQ_CLIP_QUANTILES: tuple[float, ...] = (0.999, 0.9995, 0.9999, 0.99999, 1.0)
# Clip quantile of the reference's naive int8 per-row quantizer (embeddings, "rowwise").
ROWWISE_CLIP_QUANTILE = 0.9999984
# Largest finite fp16; a larger scale would become inf in the artifact.
_QUANT_FP16_MAX = 65504.0


class QuantError(PgolfError, ValueError):
    """Bad input to a quantizer (bit width, shape, non-finite values)."""


def quant_qmax(bits: int) -> int:
    """Largest code of the symmetric `bits`-bit grid: 2**(bits-1) - 1."""
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise QuantError(f"quantizer bits must be an int in 2..8 (16 = keep fp16), got {bits!r}")
    return (1 << (bits - 1)) - 1


def quant_round_fp16(x: Tensor) -> Tensor:
    """Round positive normal float32 values to the nearest fp16 value (ties to even), as float32.

    Integer bit arithmetic instead of .to(float16): torch.compile (inductor) drops a
    float32 -> fp16 -> float32 round trip, which would move QAT off the artifact's grid.
    Valid for fp16's normal range, which every scale is in (>= 1/127, <= 65504).
    """
    bits = x.float().contiguous().view(torch.int32)
    bits = bits + (0xFFF + ((bits >> 13) & 1))
    return (bits & ~0x1FFF).view(torch.float32)


# Smallest normal fp16: the floor of the newer clip rules (SDClip, GPTQ), which drop the
# reference's 1/qmax floor; that floor rounds whole rows of small trained weights to 0/+-1.
QUANT_FP16_TINY = 2.0 ** -14


def quant_scale_from_clip(clip: Tensor, qmax: int, floor: float | None = None) -> Tensor:
    """Per-row clip -> the fp16-representable scale, returned as float32 (floor: 1/qmax by default)."""
    lo = 1.0 / qmax if floor is None else floor
    return quant_round_fp16((clip.float() / qmax).clamp(min=lo, max=_QUANT_FP16_MAX))


def quant_codes(w: Tensor, scale: Tensor, qmax: int) -> Tensor:
    """Integer codes (as float32) of `w` on the grid of per-row `scale` (shape w.shape[:-1])."""
    return torch.clamp(torch.round(w.float() / scale.unsqueeze(-1)), -qmax, qmax)


def quant_row_view(w: Tensor) -> Tensor:
    """A [rows, cols] float32 view of a >= 2-D tensor (rows = all dims but the last)."""
    if w.dim() < 2:
        raise QuantError(f"per-row quantization needs a >= 2-D tensor, got shape {tuple(w.shape)}")
    return w.detach().float().reshape(-1, w.shape[-1])


def row_abs_quantiles(w: Tensor, quantiles: tuple[float, ...]) -> Tensor:
    """[len(quantiles), rows] per-row quantiles of |w|, linear interpolation like torch.quantile.

    One sort per matrix serves every candidate and has no input-size limit.
    """
    a = quant_row_view(w).abs()
    srt, _ = torch.sort(a, dim=1)
    n = a.shape[1]
    out = []
    for qq in quantiles:
        if not 0.0 <= qq <= 1.0:
            raise QuantError(f"clip quantile must be in [0, 1], got {qq}")
        # float32 rank arithmetic, as torch.quantile does, so clips agree bit for bit
        pos = torch.tensor(qq, dtype=torch.float32) * (n - 1)
        lo = int(pos.floor())
        hi = min(lo + 1, n - 1)
        frac = (pos - lo).expand(a.shape[0])
        out.append(torch.lerp(srt[:, lo], srt[:, hi], frac))
    return torch.stack(out)


def quantize_rows(w: Tensor, bits: int, clip_quantile: float = 1.0,
                  floor: float | None = None) -> tuple[Tensor, Tensor]:
    """Per-row quantization with one fixed clip quantile -> (int8 codes shaped like w, fp16 scale [rows]);
    floor: the smallest scale (None = the reference's 1/qmax)."""
    qmax = quant_qmax(bits)
    w2 = quant_row_view(w)
    clip = w2.abs().amax(dim=1) if clip_quantile >= 1.0 else row_abs_quantiles(w2, (clip_quantile,))[0]
    scale = quant_scale_from_clip(clip, qmax, floor)
    q = quant_codes(w2, scale, qmax).to(torch.int8)
    return q.reshape(w.shape), scale.to(torch.float16)


def peak_grid_codes(x: Tensor, div: float, lo: int, hi: int) -> tuple[Tensor, Tensor]:
    """Codes of each row of x ([n, m]) on the grid scale = fp16(max|row| / div), clamped to
    [lo, hi] -> (int8 codes [n, m], fp16 scales [n]): #1855's grid for gates and LQER factors.

    An all-zero row gets scale 0 and codes 0 (its reconstruction is exactly 0)."""
    peak = x.float().abs().amax(dim=1).clamp_min(1e-10)
    s = (peak / div).to(torch.float16)
    sf = s.float().unsqueeze(1)
    q = torch.clamp(torch.round(x.float() / torch.where(sf > 0, sf, 1.0)), lo, hi)
    return torch.where(sf > 0, q, 0.0).to(torch.int8), s


def dequantize_rows(q: Tensor, scale: Tensor) -> Tensor:
    """float32 reconstruction q * scale (scale per row of q's [-1, cols] view)."""
    q2 = q.reshape(-1, q.shape[-1]).float()
    return (q2 * scale.float().reshape(-1, 1)).reshape(q.shape)


def _candidate_errors(w2: Tensor, bits: int, quantiles: tuple[float, ...]
                           ) -> tuple[Tensor, Tensor]:
    """Per candidate: fp16 scales [k, rows] and per-row sum of squared errors [k, rows]."""
    qmax = quant_qmax(bits)
    clips = row_abs_quantiles(w2, quantiles)
    scales = quant_scale_from_clip(clips, qmax)
    errs = torch.empty_like(scales)
    for k in range(len(quantiles)):
        dq = quant_codes(w2, scales[k], qmax) * scales[k].unsqueeze(1)
        errs[k] = (dq - w2).pow(2).sum(dim=1)
    return scales, errs


def gptq_lite_quantize(w: Tensor, bits: int = 6, clip_search: str = "matrix",
                       quantiles: tuple[float, ...] = GPTQ_CLIP_QUANTILES
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """GPTQ-lite: pick each clip among per-row |w| quantiles by lowest reconstruction MSE.

    clip_search="matrix": one quantile for the whole matrix (the reference);
    "row": the best quantile for each row separately (never worse).
    Returns (int8 codes shaped like w, fp16 scale [rows], chosen quantile index per row).
    Ties go to the earliest candidate, as in the reference's strict '<' loop.
    """
    if clip_search not in ("matrix", "row"):
        raise QuantError(f"clip_search must be 'matrix' or 'row', got {clip_search!r}")
    w2 = quant_row_view(w)
    scales, errs = _candidate_errors(w2, bits, tuple(quantiles))
    rows = torch.arange(w2.shape[0])
    if clip_search == "matrix":
        pick = torch.full((w2.shape[0],), int(torch.argmin(errs.sum(dim=1))), dtype=torch.long)
    else:
        pick = torch.argmin(errs, dim=0)
    scale = scales[pick, rows]
    q = quant_codes(w2, scale, quant_qmax(bits)).to(torch.int8)
    return q.reshape(w.shape), scale.to(torch.float16), pick
