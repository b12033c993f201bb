"""Sliding-window evaluation: every target scored exactly once, each with long context.

The reference re-scores its tail 31 times when the length is not a multiple of the stride;
here the last window is aligned to the end and scores only what is still unscored.
"""

import time
from typing import Any, Callable

import torch

from pgolf.dist import Comm
from pgolf.eval.bpb import (BpbAccumulator, EvalInputError, EvalProgress, ScoreRecorder, as_byte_tables, eval_rank_span,
                            score_windows, val_tokens_tensor)


def plan_windows(n_targets: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, score_lo, score_hi) windows covering targets [0, n_targets) exactly once.

    A window feeds targets [start, start + min(seq_len, n_targets - start)); the first
    scores all of them, each later one its last `stride` (the final one fewer, aligned to
    the end so nothing is scored twice).
    """
    if seq_len <= 0 or stride <= 0 or stride > seq_len:
        raise EvalInputError(f"sliding eval needs 0 < stride <= seq_len, got stride={stride} "
                             f"seq_len={seq_len}; fix eval.stride / eval.seq_len")
    if n_targets <= 0:
        return []
    first = min(seq_len, n_targets)
    windows = [(0, 0, first)]
    lo = first
    while lo < n_targets:
        hi = min(lo + stride, n_targets)
        windows.append((hi - seq_len, lo, hi))
        lo = hi
    return windows


def eval_sliding(model: torch.nn.Module, val_tokens: Any, seq_len: int, stride: int,
                 batch_seqs: int, tables: Any, comm: Comm, device: torch.device,
                 log: Callable | None = None, scorer: Callable | None = None,
                 recorder: ScoreRecorder | None = None, events: Any = None,
                 budget_seconds: float = 0.0) -> dict:
    """Sliding-window val_loss/val_bpb; windows split contiguously over ranks.

    scorer: None (plain NLL) or a pgolf.eval.slot.SlotScorer. Returns dict(val_loss,
    val_bpb, tokens, bytes, seconds).
    """
    t0 = time.perf_counter()
    tokens = val_tokens_tensor(val_tokens)
    n = tokens.numel() - 1
    tables = as_byte_tables(tables, device)
    windows = plan_windows(n, seq_len, stride)
    lo, hi = eval_rank_span(len(windows), comm.rank, comm.world_size)
    mine = windows[lo:hi]
    acc = BpbAccumulator(device)
    label = "sliding" + (f"+{scorer.label}" if hasattr(scorer, "label") else "")
    suffix = getattr(scorer, "log_suffix", "")
    prog = EvalProgress(log if comm.is_main else None, label, "windows", len(mine),
                        budget_seconds, suffix=suffix)
    score_windows(model, tokens, mine, seq_len, max(1, batch_seqs), tables, acc, device,
                  scorer=scorer, recorder=recorder, events=events, progress=prog)
    acc.reduce(comm)
    if recorder is not None:
        recorder.reduce(comm, device)
    return acc.result(time.perf_counter() - t0)
