"""SLOT: an additive hidden-state offset delta fitted at eval time through compute_logits.

batch  (published, NON-CAUSAL): one delta per batch of windows, fitted on every position of
       every window, including the targets it then scores and tokens that come after
       earlier windows' scored ones. Kept for reproduction; labelled NON-CAUSAL everywhere.
causal: one delta per window, fitted only on that window's context targets (those before
       score_lo, all scored by earlier windows), then applied to the targets it scores. The
       first window has no context, so its delta stays 0. All windows' deltas are fitted
       together: each one's loss term touches only its own delta, and AdamW is elementwise,
       so batching equals fitting them one by one.
"""

from typing import Any

import torch
import torch.nn.functional as F

from pgolf.eval.bpb import EvalInputError
from pgolf.eval.forward import Forwards

SLOT_MODES = ("off", "batch", "causal")


class SlotScorer:
    """Window scorer for score_windows (sliding eval and TTT's scoring phase)."""

    needs_grad = True

    def __init__(self, mode: str, lr: float = 0.003, steps: int = 5, wd: float = 1e-8,
                 eps: float = 1e-5, forwards: Forwards | None = None) -> None:
        if mode not in ("batch", "causal"):
            raise EvalInputError(f"SlotScorer mode must be batch or causal, got {mode!r}; "
                                 "set eval.slot_mode")
        self.mode, self.lr, self.steps, self.wd, self.eps = mode, lr, steps, wd, eps
        self.forwards = forwards or Forwards()

    @property
    def causal(self) -> bool:
        return self.mode == "causal"

    @property
    def label(self) -> str:
        return "causal-slot" if self.causal else "slot"

    @property
    def log_suffix(self) -> str:
        return "" if self.causal else " NON-CAUSAL(batch SLOT)"

    def _slot_fit_mask(self, lo: torch.Tensor, shape: tuple) -> torch.Tensor | None:
        """Float [B,T] weights of the fitting loss (None = every position, batch mode)."""
        if not self.causal:
            return None
        pos = torch.arange(shape[1], device=lo.device)[None, :]
        return (pos < lo[:, None]).float()

    def _slot_loss(self, model: torch.nn.Module, h: torch.Tensor, delta: torch.Tensor,
                   y: torch.Tensor, fit: torch.Tensor | None) -> torch.Tensor:
        logits = model.compute_logits(h + delta)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(y.shape)
        if fit is None:
            return ce.mean()
        # Per-window mean, summed: each window's delta gets exactly its own gradient.
        return ((ce * fit).sum(1) / fit.sum(1).clamp(min=1.0)).sum()

    def fit_delta(self, model: torch.nn.Module, h: torch.Tensor, y: torch.Tensor,
                  lo: torch.Tensor) -> torch.Tensor:
        """The fitted delta: [1,1,d] (batch) or [B,1,d] (causal)."""
        b, _, d = h.shape
        delta = torch.zeros(b if self.causal else 1, 1, d, device=h.device, dtype=torch.float32,
                            requires_grad=True)
        fit = self._slot_fit_mask(lo, tuple(y.shape))
        if self.steps <= 0 or (fit is not None and float(fit.sum()) == 0.0):
            return delta.detach()
        opt = torch.optim.AdamW([delta], lr=self.lr, weight_decay=self.wd, eps=self.eps)
        with torch.enable_grad():
            for _ in range(self.steps):
                loss = self._slot_loss(model, h, delta, y, fit)
                (grad,) = torch.autograd.grad(loss, [delta])
                delta.grad = grad
                opt.step()
        return delta.detach()

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """float32 NLL [B,T] of every position under H + delta (the caller masks to [lo, hi))."""
        with torch.no_grad():
            h = self.forwards.get(model, "forward_hidden", x)(x).detach()
        delta = self.fit_delta(model, h, y, lo)
        with torch.no_grad():
            logits = model.compute_logits(h + delta)
            return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(),
                                   reduction="none").view(y.shape)


def make_slot_scorer(ecfg: Any, forwards: Forwards | None = None) -> SlotScorer | None:
    """SlotScorer from an EvalConfig (None when eval.slot_mode is off)."""
    if ecfg.slot_mode not in SLOT_MODES:
        raise EvalInputError(f"eval.slot_mode must be one of {SLOT_MODES}, got {ecfg.slot_mode!r}")
    if ecfg.slot_mode == "off":
        return None
    return SlotScorer(ecfg.slot_mode, ecfg.slot_lr, ecfg.slot_steps, ecfg.slot_wd, ecfg.slot_eps, forwards)
