"""Late-QAT fake quantization on exactly the artifact's grid, with a straight-through gradient."""

import torch
from torch import Tensor

from pgolf.quant.quantizers import quant_codes, quant_qmax, quant_scale_from_clip


def fake_quant_ste(w: Tensor, bits: int) -> Tensor:
    """Per-row symmetric fake quantization of w (2-D [rows, cols] or banks [n, rows, cols]).

    Forward: dequantize(quantize_rows(w, bits, clip_quantile=1.0)), i.e. clip = row max,
    scale = fp16(max(amax / qmax, 1 / qmax)). Backward: identity (straight-through).
    Branch-free and .item()-free so torch.compile traces it into the graph; `bits` is a
    Python int and specializes the graph.
    """
    qmax = quant_qmax(bits)
    w32 = w.float()
    scale = quant_scale_from_clip(w32.detach().abs().amax(dim=-1), qmax)
    dq = quant_codes(w32.detach(), scale, qmax) * scale.unsqueeze(-1)
    return w + (dq.to(w.dtype) - w).detach()
