"""Legal score-first test-time training (TTT).

The validation targets are cut into chunks of eval.ttt_chunk_tokens. For each chunk, first
its sliding windows are scored (torch.inference_mode, or SLOT's no_grad scorer), THEN the
model trains on the chunk's tokens; the last chunk is never trained on. Sliding windows
whose scored range crosses a chunk boundary are split there, so every target is scored by
the model state of its own chunk, exactly once. Training works on a deep copy: the
caller's model is never modified.
"""

import copy
import math
import time
from typing import Any, Callable

import torch

from pgolf.dist import Comm
from pgolf.eval.bpb import (BpbAccumulator, EvalInputError, EvalProgress, ScoreRecorder, as_byte_tables,
                            eval_emit_event, eval_rank_span, score_windows, val_tokens_tensor)
from pgolf.eval.sliding import plan_windows
from pgolf.hw import compute_autocast


def ttt_chunk_bounds(n_targets: int, chunk_tokens: int) -> list[tuple[int, int]]:
    """[lo, hi) target ranges of the TTT chunks (the last may be shorter)."""
    if chunk_tokens <= 0:
        raise EvalInputError(f"eval.ttt_chunk_tokens must be > 0, got {chunk_tokens}")
    return [(lo, min(lo + chunk_tokens, n_targets)) for lo in range(0, n_targets, chunk_tokens)]


def ttt_chunk_windows(windows: list, chunks: list) -> list[list[tuple[int, int, int]]]:
    """Windows of each chunk; a window scoring across a chunk boundary is split there."""
    out: list[list[tuple[int, int, int]]] = [[] for _ in chunks]
    c = 0
    for start, lo, hi in windows:
        while lo < hi:
            while chunks[c][1] <= lo:
                c += 1
            cut = min(hi, chunks[c][1])
            out[c].append((start, lo, cut))
            lo = cut
    return out


def ttt_train_sequences(lo: int, hi: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, length) training sequences inside targets [lo, hi): full seq_len pieces; a
    chunk shorter than seq_len trains on one short sequence; a partial remainder is dropped."""
    n = (hi - lo) // seq_len
    if n == 0:
        return [(lo, hi - lo)] if hi > lo else []
    return [(lo + k * seq_len, seq_len) for k in range(n)]


def _cosine_lr(base_lr: float, chunk: int, n_chunks: int) -> float:
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * chunk / max(n_chunks - 1, 1)))


def _prime(model: torch.nn.Module, lengths: set, device: torch.device) -> None:
    """Run one no_grad forward per length before any inference_mode scoring, so caches a
    model fills lazily (e.g. RoPE tables) hold normal tensors usable by TTT's backward."""
    with torch.no_grad(), compute_autocast(device):
        for n in sorted(lengths):
            model.forward_hidden(torch.zeros(1, n, dtype=torch.long, device=device))


def _sync_grads(params: list, comm: Comm) -> None:
    """Sum gradients over ranks (each rank's loss is pre-scaled by its share of the tokens)."""
    if comm.world_size == 1:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    comm.all_reduce_sum(flat)
    off = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[off:off + n].view_as(p.grad))
        off += n


def _train_chunk(model: torch.nn.Module, opt: torch.optim.Optimizer, params: list,
                     tokens: torch.Tensor, seqs: list, ecfg: Any, comm: Comm,
                     device: torch.device, events: Any) -> None:
    """ecfg.ttt_epochs passes over the chunk's sequences; every rank takes the same number
    of optimizer steps, each on its contiguous share of the step's global batch."""
    bs = max(1, ecfg.ttt_batch_seqs)
    freeze = list(range(min(ecfg.ttt_freeze_blocks, model.num_layers)))
    for _ in range(ecfg.ttt_epochs):
        for k in range(0, len(seqs), bs):
            step = seqs[k:k + bs]
            a, b = eval_rank_span(len(step), comm.rank, comm.world_size)
            mine = step[a:b]
            total = sum(n for _, n in step)
            opt.zero_grad(set_to_none=False)
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            # Sequences of one step share a length unless the chunk is a single short one.
            if mine:
                n = mine[0][1]
                x = torch.stack([tokens[s:s + n] for s, _ in mine]).to(device)
                y = torch.stack([tokens[s + 1:s + n + 1] for s, _ in mine]).to(device)
                with compute_autocast(device):
                    loss = model(x, y) * (len(mine) * n / total)
                loss.backward()
                for s, _ in mine:
                    eval_emit_event(events, "train", s, s + n)
            if freeze:
                model.zero_block_grads_(freeze)
            _sync_grads(params, comm)
            if ecfg.ttt_grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, ecfg.ttt_grad_clip)
            opt.step()


def eval_ttt(model: torch.nn.Module, val_tokens: Any, ecfg: Any, tables: Any, comm: Comm,
             device: torch.device, log: Callable | None = None, scorer: Callable | None = None,
             recorder: ScoreRecorder | None = None, events: Any = None) -> dict:
    """Score-first TTT over val_tokens; returns dict(val_loss, val_bpb, tokens, bytes, seconds,
    score_seconds, train_seconds, chunks). Windows: eval.stride (0 = non-overlapping)."""
    t0 = time.perf_counter()
    tokens = val_tokens_tensor(val_tokens)
    n = tokens.numel() - 1
    seq_len = ecfg.seq_len
    tables = as_byte_tables(tables, device)
    chunks = ttt_chunk_bounds(n, ecfg.ttt_chunk_tokens)
    per_chunk = ttt_chunk_windows(plan_windows(n, seq_len, ecfg.stride or seq_len), chunks)
    work = copy.deepcopy(model)
    params = [p for p in work.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=ecfg.ttt_lr, momentum=ecfg.ttt_momentum)
    _prime(work, {min(seq_len, n)} | {ln for c in chunks for _, ln in
                                          ttt_train_sequences(c[0], c[1], seq_len)}, device)
    acc = BpbAccumulator(device)
    label = "ttt" + (f"+{scorer.label}" if hasattr(scorer, "label") else "")
    prog = EvalProgress(log if comm.is_main else None, label, "chunks", len(chunks),
                        getattr(ecfg, "budget_seconds", 0.0), lines=20,
                        suffix=getattr(scorer, "log_suffix", ""))
    score_s = train_s = 0.0
    for c, (clo, chi) in enumerate(chunks):
        ts = time.perf_counter()
        a, b = eval_rank_span(len(per_chunk[c]), comm.rank, comm.world_size)
        score_windows(work, tokens, per_chunk[c][a:b], seq_len, max(1, ecfg.batch_seqs), tables,
                      acc, device, scorer=scorer, recorder=recorder, events=events)
        tt = time.perf_counter()
        score_s += tt - ts
        if c < len(chunks) - 1 and ecfg.ttt_epochs > 0:
            for g in opt.param_groups:
                g["lr"] = _cosine_lr(ecfg.ttt_lr, c, len(chunks))
            _train_chunk(work, opt, params, tokens, ttt_train_sequences(clo, chi, seq_len),
                             ecfg, comm, device, events)
        train_s += time.perf_counter() - tt
        prog.step(c + 1, acc)
    acc.reduce(comm)
    if recorder is not None:
        recorder.reduce(comm, device)
    out = acc.result(time.perf_counter() - t0)
    out.update(score_seconds=score_s, train_seconds=train_s, chunks=len(chunks))
    return out
