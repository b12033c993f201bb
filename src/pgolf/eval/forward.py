"""The model entry points evaluation calls: eager, or torch.compile'd as the reference does.

Compiled graphs are static (dynamic=False): one per batch shape. Evaluation sees a few
shapes (full batches of full windows, then a short last batch or window), so only windows
of the full eval length are compiled, for at most `max_batches` batch sizes; anything else
runs eagerly rather than recompiling. Models are keyed weakly: TTT's working copy gets its
own graphs and frees them with itself.
"""

import weakref
from typing import Callable

import torch

from pgolf.hw import at_least_fp32, maybe_compile


class Forwards:
    """`get(model, "token_nll" | "forward_hidden", x)` -> the callable to use for input x."""

    def __init__(self, compile: bool = False, seq_len: int = 0, max_batches: int = 2) -> None:
        self.compile, self.seq_len, self.max_batches = compile, seq_len, max_batches
        self._compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._batches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, model: torch.nn.Module, name: str, x: torch.Tensor) -> Callable:
        eager = getattr(model, name)
        if not self.compile or x.shape[1] != self.seq_len:
            return eager
        batches = self._batches.setdefault(model, set())
        if x.shape[0] not in batches:
            if len(batches) >= self.max_batches:
                return eager
            batches.add(x.shape[0])
        fns = self._compiled.setdefault(model, {})
        if name not in fns:
            fns[name] = maybe_compile(eager, True)
        return fns[name]


class PlainScorer:
    """The model's own per-token NLL, through `forwards` (lo/hi unused)."""

    needs_grad = False

    def __init__(self, forwards: Forwards | None = None) -> None:
        self.forwards = forwards or Forwards()

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return at_least_fp32(self.forwards.get(model, "token_nll", x)(x, y))
