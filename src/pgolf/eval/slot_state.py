"""Causal SLOT state carried forward within a document, and the document masks it needs.

Score first, then update (the rule of legal TTT): the carried delta / logit bias is only
ever fitted on targets that were scored before, and it is dropped at every BOS, so one
document's adaptation never leaks into the next. Windows reach a scorer in stream order
(sliding eval, and TTT's chunks in order), but a scorer sees no global positions: a batch
continues the carried state only when its windows' inputs repeat the tail of the scored
tokens the state was last fitted on. Whatever that check decides, the state comes from
this rank's earlier (already scored) tokens, so it is a quality rule, never a legality one.
"""

import torch


def slot_doc_masks(x: torch.Tensor, lo: torch.Tensor, bos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, apply) [B,T] bool: apply = targets in the document of the window's first
    scored target; fit = those among them before score_lo (scored by earlier windows).

    Target p is predicted from inputs 0..p, so an input BOS at p starts a new document at p.
    """
    pos = torch.arange(x.shape[1], device=x.device)[None, :]
    if bos_id < 0:
        same = torch.ones_like(x, dtype=torch.bool)
    else:
        doc = (x == bos_id).long().cumsum(1)
        same = doc == doc.gather(1, lo.long()[:, None])
    return same & (pos < lo[:, None]), same


def slot_links(xk: torch.Tensor, a: int, tail: torch.Tensor | None) -> bool:
    """Whether window input xk continues right after `tail` (the previous scored inputs)."""
    if tail is None or a <= 0:
        return False
    m = min(a, tail.numel())
    return bool(torch.equal(xk[a - m:a], tail[tail.numel() - m:]))


class SlotCarry:
    """The delta [D] and logit bias [V] carried from batch to batch within one document."""

    def __init__(self, bos_id: int, match: int = 32) -> None:
        self.bos_id, self.match = bos_id, match
        self.delta: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.tail: torch.Tensor | None = None

    def plan(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[list, torch.Tensor]:
        """For a batch of consecutive windows: alive[k] (the carried state's document reaches
        window k's first scored target) and last_doc [B,T] bool (the scored targets of the
        document the batch ends in, i.e. what the next state may be fitted on)."""
        xs, los, his = x.detach().cpu(), lo.tolist(), hi.tolist()
        bos = self.bos_id
        alive: list[bool] = []
        live = self.delta is not None
        tail = self.tail
        start = (0, los[0])  # (window, position) where the batch's last document starts
        for k, (a, b) in enumerate(zip(los, his)):
            if not slot_links(xs[k], a, tail):
                live, start = False, (k, a)
            scored = xs[k, a:b]
            hits = torch.nonzero(scored == bos).flatten() if bos >= 0 else scored[:0]
            alive.append(live and not (hits.numel() and int(hits[0]) == 0))
            if hits.numel():
                live, start = False, (k, a + int(hits[-1]))
            tail = xs[k, max(0, b - self.match):b]
        self.tail = tail
        last_doc = torch.zeros(x.shape, dtype=torch.bool)
        k0, p0 = start
        last_doc[k0, p0:his[k0]] = True
        for k in range(k0 + 1, len(los)):
            last_doc[k, los[k]:his[k]] = True
        return alive, last_doc.to(x.device)

    def init(self, alive: list, d: int, v: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Starting delta [B,1,d] and bias [B,1,v]: the carried state where alive, else zeros."""
        n = len(alive)
        delta = torch.zeros(n, 1, d, device=device)
        bias = torch.zeros(n, 1, v, device=device)
        if self.delta is not None:
            keep = torch.tensor(alive, device=device, dtype=torch.bool)
            delta[keep] = self.delta.to(device)
            bias[keep] = self.bias.to(device)
        return delta, bias

    def store(self, delta: torch.Tensor, bias: torch.Tensor) -> None:
        self.delta, self.bias = delta.detach().reshape(-1), bias.detach().reshape(-1)
