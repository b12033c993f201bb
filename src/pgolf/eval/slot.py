"""SLOT: an additive hidden-state offset delta fitted at eval time through compute_logits.

batch  (published, NON-CAUSAL): one delta per batch of windows, fitted on every position of
       every window, including the targets it then scores and tokens that come after
       earlier windows' scored ones. Kept for reproduction; labelled NON-CAUSAL everywhere.
causal: one delta per window, fitted only on that window's context targets (those before
       score_lo, all scored by earlier windows) of the document its first scored target is
       in, then applied to the targets it scores in that document (targets after a BOS get
       none: nothing of their document was scored yet). The first window has no context, so
       its delta stays 0. All windows' deltas are fitted together: each one's loss term
       touches only its own delta, and AdamW is elementwise, so batching equals fitting them
       one by one. Causal options:
       bias  - also a per-window logit bias [V] added after the soft-cap (a learned unigram
               cache of the document so far).
       carry - the state persists from batch to batch within a document (eval/slot_state.py):
               each window starts from it, and after the batch is scored it is refitted on the
               batch's newly scored targets; reset at every BOS.
"""

from typing import Any

import torch
import torch.nn.functional as F

from pgolf.eval.bpb import EvalInputError
from pgolf.eval.forward import Forwards
from pgolf.hw import at_least_fp32
from pgolf.eval.slot_state import SlotCarry, slot_doc_masks


class SlotScorer:
    """Window scorer for score_windows (sliding eval and TTT's scoring phase)."""

    needs_grad = True

    def __init__(self, mode: str, lr: float = 0.003, steps: int = 5, wd: float = 1e-8,
                 eps: float = 1e-5, forwards: Forwards | None = None, bias: bool = False,
                 bias_lr: float = 0.01, carry: bool = False, carry_steps: int = 2,
                 bos_id: int = -1) -> None:
        if mode not in ("batch", "causal"):
            raise EvalInputError(f"SlotScorer mode must be batch or causal, got {mode!r}; "
                                 "set eval.slot_mode")
        if mode == "batch" and (bias or carry):
            raise EvalInputError("eval.slot_bias / eval.slot_carry need eval.slot_mode=causal")
        self.mode, self.lr, self.steps, self.wd, self.eps = mode, lr, steps, wd, eps
        self.bias, self.bias_lr, self.carry_steps, self.bos_id = bias, bias_lr, carry_steps, bos_id
        self.carry = SlotCarry(bos_id) if carry else None
        self.forwards = forwards or Forwards()

    @property
    def causal(self) -> bool:
        return self.mode == "causal"

    @property
    def label(self) -> str:
        if not self.causal:
            return "slot"
        return "causal-slot" + ("-carry" if self.carry is not None else "") + ("-bias" if self.bias else "")

    @property
    def log_suffix(self) -> str:
        return "" if self.causal else " NON-CAUSAL(batch SLOT)"

    def _opt(self, delta: torch.Tensor, bias: torch.Tensor | None) -> torch.optim.Optimizer:
        groups = [{"params": [delta], "lr": self.lr}]
        if bias is not None:
            groups.append({"params": [bias], "lr": self.bias_lr})
        return torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.wd, eps=self.eps)

    def _fit(self, loss_fn: Any, delta: torch.Tensor, bias: torch.Tensor | None, steps: int) -> None:
        """`steps` AdamW steps on loss_fn(); grads of the model's own weights are never taken."""
        params = [delta] + ([bias] if bias is not None else [])
        opt = self._opt(delta, bias)
        with torch.enable_grad():
            for _ in range(steps):
                grads = torch.autograd.grad(loss_fn(), params)
                for p, g in zip(params, grads):
                    p.grad = g
                opt.step()

    def _logits(self, model: torch.nn.Module, h: torch.Tensor, delta: torch.Tensor,
                     bias: torch.Tensor | None, apply: torch.Tensor | None) -> torch.Tensor:
        if apply is None:
            return model.compute_logits(h + delta)
        m = apply[..., None].to(h.dtype)
        logits = model.compute_logits(h + delta * m)
        return logits if bias is None else logits + bias * m.float()

    def _nll(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(at_least_fp32(logits.flatten(0, 1)), y.flatten(), reduction="none").view(y.shape)

    def fit_delta(self, model: torch.nn.Module, h: torch.Tensor, y: torch.Tensor,
                  lo: torch.Tensor) -> torch.Tensor:
        """The batch (NON-CAUSAL) delta [1,1,d], fitted on every position of the batch."""
        delta = torch.zeros(1, 1, h.shape[-1], device=h.device, dtype=at_least_fp32(h[:0]).dtype,
                            requires_grad=True)
        self._fit(lambda: self._nll(model.compute_logits(h + delta), y).mean(),
                       delta, None, self.steps)
        return delta.detach()

    def fit_causal(self, model: torch.nn.Module, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                   lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Per-window (delta [B,1,d], bias [B,1,V] or None, apply mask [B,T]); with carry,
        also refits the carried state on this batch's scored targets (call once per batch)."""
        b, _, d = h.shape
        fit, apply = slot_doc_masks(x, lo, self.bos_id)
        v = model.compute_logits(h[:1, :1]).shape[-1] if (self.bias or self.carry) else 1
        if self.carry is not None:
            alive, last_doc = self.carry.plan(x, lo, hi)
            delta, bias = self.carry.init(alive, d, v, h.device)
        else:
            delta, bias = torch.zeros(b, 1, d, device=h.device), torch.zeros(b, 1, v, device=h.device)
        delta.requires_grad_(True)
        bias = bias.requires_grad_(True) if self.bias else None
        w = fit.float()
        if self.steps > 0 and float(w.sum()) > 0:
            # Per-window mean, summed: each window's parameters get exactly their own gradient.
            def loss() -> torch.Tensor:
                ce = self._nll(self._logits(model, h, delta, bias, apply), y)
                return ((ce * w).sum(1) / w.sum(1).clamp(min=1.0)).sum()
            self._fit(loss, delta, bias, self.steps)
        delta = delta.detach()
        bias = bias.detach() if bias is not None else None
        if self.carry is not None:
            self._carry_update(model, h, y, delta, bias, apply, last_doc, int(hi[-1]) - 1, v)
        return delta, bias, apply

    def _carry_update(self, model: torch.nn.Module, h: torch.Tensor, y: torch.Tensor,
                           delta: torch.Tensor, bias: torch.Tensor | None, apply: torch.Tensor,
                           last_doc: torch.Tensor, end: int, v: int) -> None:
        """Next carried state: the last window's parameters when its document reaches the
        batch's end (else zeros), refitted on the batch's scored targets of that document.
        Runs after the batch's scores exist, on tokens they cover: score first, then update."""
        keep = bool(apply[-1, end])
        d0 = delta[-1].clone() if keep else torch.zeros_like(delta[-1])
        b0 = (bias[-1].clone() if keep and bias is not None else torch.zeros(1, v, device=h.device))
        sel = last_doc.nonzero(as_tuple=True)
        if self.carry_steps > 0 and sel[0].numel():
            hs, ys = h[sel][None], y[sel][None]
            d0.requires_grad_(True)
            b0 = b0.requires_grad_(True) if self.bias else b0

            def loss() -> torch.Tensor:
                logits = model.compute_logits(hs + d0)
                return self._nll(logits + b0 if self.bias else logits, ys).mean()
            self._fit(loss, d0, b0 if self.bias else None, self.carry_steps)
        self.carry.store(d0, b0)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """float32 NLL [B,T] of every position under H + delta (the caller masks to [lo, hi))."""
        with torch.no_grad():
            h = self.forwards.get(model, "forward_hidden", x)(x).detach()
        if not self.causal:
            delta = self.fit_delta(model, h, y, lo)
            with torch.no_grad():
                return self._nll(model.compute_logits(h + delta), y)
        delta, bias, apply = self.fit_causal(model, h, x, y, lo, hi)
        with torch.no_grad():
            return self._nll(self._logits(model, h, delta, bias, apply), y)


def make_slot_scorer(ecfg: Any, forwards: Forwards | None = None) -> SlotScorer | None:
    """SlotScorer from an EvalConfig (None when eval.slot_mode is off)."""
    if ecfg.slot_mode == "off":
        return None
    return SlotScorer(ecfg.slot_mode, ecfg.slot_lr, ecfg.slot_steps, ecfg.slot_wd, ecfg.slot_eps, forwards,
                      bias=ecfg.slot_bias, bias_lr=ecfg.slot_bias_lr, carry=ecfg.slot_carry,
                      carry_steps=ecfg.slot_carry_steps, bos_id=ecfg.slot_bos_id)
