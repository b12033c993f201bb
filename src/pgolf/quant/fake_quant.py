"""Late QAT: fake quantization with a straight-through gradient, applied to a model from outside.

The model only knows a generic `weight_transform(group, w)` seam (see `GPT`); this module
fills it. Two scopes, because the reference and pgolf disagree on what late QAT touches:
  matrices   every attention/MLP block matrix, on exactly the artifact's grid (the fix:
             the int6 matrices are what the artifact quantizes);
  reference  only the small projections the reference's CastedLinear covers once its
             block matrices moved into banks (bigram.proj, ve.proj), on its grid:
             scale = max(rowmax / 31, 1 / 31) unrounded, codes clamped to [-32, 31].
`active` is a plain bool: before the switch the forward computes nothing extra (fake
quantizing four banks costs ~7.5% of a CPU step), and a compiled graph guards on it, so
the QAT-on variant is a second graph that priming compiles ahead of the timed loop.
"""

from typing import Literal

import torch
from torch import Tensor, nn

from pgolf.quant.quantizers import quant_codes, quant_qmax, quant_scale_from_clip

QatScope = Literal["matrices", "reference"]
QAT_SCOPES: tuple[str, ...] = ("matrices", "reference")
# Weight groups the model hands to its transform (GPT._layer_weights, GPT.embed).
_SCOPE_GROUPS = {"matrices": "blocks", "reference": "projections"}


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


def fake_quant_reference(w: Tensor) -> Tensor:
    """The reference's int6 STE: unrounded scale max(rowmax/31, 1/31), codes in [-32, 31]."""
    w32 = w.detach().float()
    scale = (w32.abs().amax(dim=-1) / 31.0).clamp_min(1.0 / 31.0).unsqueeze(-1)
    dq = torch.clamp(torch.round(w32 / scale), -32, 31) * scale
    return w + (dq.to(w.dtype) - w).detach()


class LateQAT(nn.Module):
    """The weight transform a model calls as `transform(group, w)`; identity until `active`."""

    def __init__(self, bits: int, scope: QatScope = "matrices") -> None:
        super().__init__()
        if scope not in QAT_SCOPES:
            raise ValueError(f"quant.qat_scope must be one of {QAT_SCOPES}, got {scope!r}")
        quant_qmax(bits)  # validates the width up front, not at the switch late in training
        self.bits, self.scope = bits, scope
        self.group = _SCOPE_GROUPS[scope]
        self.active = False

    def forward(self, group: str, w: Tensor) -> Tensor:
        if not self.active or group != self.group:
            return w
        return fake_quant_ste(w, self.bits) if self.scope == "matrices" else fake_quant_reference(w)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scope={self.scope}, active={self.active}"


def attach_late_qat(model: nn.Module, bits: int, scope: QatScope = "matrices") -> LateQAT:
    """Install late QAT as `model.weight_transform` (inactive) and return it."""
    qat = LateQAT(bits, scope)
    model.weight_transform = qat
    return qat
