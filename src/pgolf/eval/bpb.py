"""Bits per byte: device byte tables, float64 accumulators, the shared window scorer, plain eval.

Indexing convention used by every eval module: with val_tokens of length N+1, *target i*
(0 <= i < N) is token i+1 predicted from tokens[0..i]. A window (start, score_lo, score_hi)
feeds tokens[start : start+w] (w = min(seq_len, N-start)) and scores targets
[score_lo, score_hi), a sub-range of [start, start+w).
"""

import math
import time
from typing import Any, Callable

import numpy as np
import torch

from pgolf.dist import Comm
from pgolf.errors import PgolfError
from pgolf.hw import at_least_fp32, compute_autocast
from pgolf.progress import PROGRESS_EVERY_S, Progress


class EvalInputError(PgolfError, ValueError):
    """Validation tokens, tables or eval settings that cannot be evaluated as given."""


class ByteTables:
    """Per-token byte tables on one device: bytes(t | p) = base[t] + (space[t] & ~boundary[p])."""

    def __init__(self, base_bytes: Any, has_leading_space: Any, is_boundary: Any,
                 device: torch.device | str = "cpu") -> None:
        dev = torch.device(device)
        self.base = torch.as_tensor(np.asarray(base_bytes, dtype=np.int64)).to(dev)
        self.space = torch.as_tensor(np.asarray(has_leading_space, dtype=np.bool_)).to(dev)
        self.boundary = torch.as_tensor(np.asarray(is_boundary, dtype=np.bool_)).to(dev)
        if not (self.base.ndim == 1 and self.base.shape == self.space.shape == self.boundary.shape):
            raise EvalInputError("byte tables must be three 1-D arrays of equal length "
                                 "(use pgolf.data.tokenizer.build_byte_tables)")
        self.device = dev

    @property
    def vocab_size(self) -> int:
        return int(self.base.numel())

    def token_bytes(self, prev: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """int64 bytes of each target token given the token before it (same shape as tgt)."""
        tgt = tgt.long()
        return self.base[tgt] + (self.space[tgt] & ~self.boundary[prev.long()]).long()


def target_bytes(tables: Any, lo: int, hi: int, prev: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """int64 bytes of targets [lo, hi) of the stream: the sidecar's counts at those positions,
    else the tables' count of each (previous, target) pair."""
    if hasattr(tables, "window_bytes"):
        return tables.window_bytes(torch.tensor([lo], device=tables.device), hi - lo)[0].to(tgt.device)
    return tables.token_bytes(prev, tgt)


def as_byte_tables(tables: Any, device: torch.device | str) -> ByteTables:
    """Accept a ByteTables (moved if needed) or the 3-tuple from build_byte_tables."""
    dev = torch.device(device)
    if hasattr(tables, "window_bytes"):  # per-position byte sidecars (data/sidecar.py)
        return tables.to(dev)
    if isinstance(tables, ByteTables):
        if tables.device == dev:
            return tables
        return ByteTables(tables.base.cpu().numpy(), tables.space.cpu().numpy(),
                          tables.boundary.cpu().numpy(), dev)
    if not isinstance(tables, (tuple, list)) or len(tables) != 3:
        raise EvalInputError("tables must be ByteTables or (base_bytes, has_leading_space, "
                             "is_boundary) from pgolf.data.tokenizer.build_byte_tables")
    return ByteTables(*tables, device=dev)


class BpbAccumulator:
    """float64 sums of NLL (nats), scored tokens and bytes; reduce() sums them over ranks."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    def add(self, nll: torch.Tensor, prev: torch.Tensor, tgt: torch.Tensor,
            tables: ByteTables, mask: torch.Tensor | None = None,
            nbytes: torch.Tensor | None = None) -> None:
        """Add per-token NLL [..] of targets tgt (prev = the tokens before them) where mask;
        nbytes, when given, are the targets' bytes (a sidecar) instead of the tables'."""
        if nbytes is None and hasattr(tables, "window_bytes"):
            # A sidecar's count belongs to a stream position, which tokens alone do not give.
            raise EvalInputError("byte sidecar: this scorer must pass the targets' bytes "
                                 "(target_bytes(tables, lo, hi, ...)); token tables cannot count them")
        nbytes = (tables.token_bytes(prev, tgt) if nbytes is None else nbytes).double()
        nll = nll.double()
        if mask is None:
            part = torch.stack((nll.sum(), torch.tensor(float(nll.numel()), dtype=torch.float64,
                                                        device=nll.device), nbytes.sum()))
        else:
            m = mask.double()
            part = torch.stack(((nll * m).sum(), m.sum(), (nbytes * m).sum()))
        self.sums += part.to(self.sums.device)

    def reduce(self, comm: Comm) -> None:
        comm.all_reduce_sum(self.sums)

    @property
    def nll(self) -> float:
        return float(self.sums[0])

    @property
    def tokens(self) -> int:
        return int(round(float(self.sums[1])))

    @property
    def bytes(self) -> int:
        return int(round(float(self.sums[2])))

    @property
    def val_loss(self) -> float:
        return self.nll / max(self.tokens, 1)

    @property
    def val_bpb(self) -> float:
        return (self.nll / math.log(2)) / max(self.bytes, 1)

    def result(self, seconds: float) -> dict:
        return dict(val_loss=self.val_loss, val_bpb=self.val_bpb, tokens=self.tokens,
                    bytes=self.bytes, seconds=seconds)


class ScoreRecorder:
    """Per-target NLL (float64) and score counts, for audits; reduce() merges ranks."""

    def __init__(self, n_targets: int) -> None:
        self.nll = torch.zeros(n_targets, dtype=torch.float64)
        self.count = torch.zeros(n_targets, dtype=torch.float64)

    def add(self, lo: int, nll: torch.Tensor) -> None:
        hi = lo + nll.numel()
        self.nll[lo:hi] += nll.detach().double().cpu()
        self.count[lo:hi] += 1

    def reduce(self, comm: Comm, device: torch.device | str = "cpu") -> None:
        if comm.world_size == 1:
            return
        buf = torch.stack((self.nll, self.count)).to(device)
        comm.all_reduce_sum(buf)
        self.nll, self.count = buf[0].cpu(), buf[1].cpu()

    def nll_array(self) -> np.ndarray:
        return self.nll.numpy().copy()

    def count_array(self) -> np.ndarray:
        return self.count.numpy().astype(np.int64)


def eval_emit_event(events: Any, kind: str, lo: int, hi: int) -> None:
    """Report a ("score"|"train", lo, hi) target range to a list or a callback (None = off)."""
    if events is None:
        return
    if callable(events):
        events((kind, lo, hi))
    else:
        events.append((kind, lo, hi))


class EvalProgress:
    """Progress lines (pgolf.progress) with running bpb and ETA; warns once when over budget.
    About `lines` lines per eval, and one at least every every_s seconds of a long one."""

    def __init__(self, log: Callable[[str], None] | None, label: str, unit: str, total: int,
                 budget_seconds: float = 0.0, lines: int = 10, suffix: str = "",
                 every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] | None = None) -> None:
        self.log, self.label, self.budget, self.suffix = log, label, budget_seconds, suffix
        self.lines = Progress(log, f"eval:{label} {unit}", total, every_s, lines, clock)
        self.total = self.lines.total
        self.warned = False
        self.projected = 0.0

    def elapsed(self) -> float:
        return self.lines.elapsed()

    def step(self, done: int, acc: BpbAccumulator, extra_seconds: float = 0.0) -> None:
        """done units of total finished; extra_seconds is time spent before this phase."""
        eta = self.lines.step(done, lambda: f"tokens:{acc.tokens} running_bpb:{acc.val_bpb:.6f}", self.suffix)
        self.projected = extra_seconds + self.elapsed() + eta
        if (self.log is not None and self.budget > 0 and not self.warned and self.projected > self.budget
                and done < self.total):
            self.warned = True
            self.log(f"eval:warning {self.label} projected {self.projected:.0f}s exceeds "
                     f"eval.budget_seconds {self.budget:.0f}s")


def plain_token_nll(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                    lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Default scorer: the model's own per-token NLL (lo/hi unused)."""
    return at_least_fp32(model.token_nll(x, y))


def val_tokens_tensor(val_tokens: Any) -> torch.Tensor:
    """1-D int64 tensor of validation tokens from a tensor or numpy array (kept on its device)."""
    if isinstance(val_tokens, torch.Tensor):
        t = val_tokens.long()
    else:
        t = torch.from_numpy(np.asarray(val_tokens).astype(np.int64))
    if t.ndim != 1 or t.numel() < 2:
        raise EvalInputError(f"val_tokens must be a 1-D sequence of at least 2 tokens, got shape "
                             f"{tuple(t.shape)}; pass the concatenated validation stream")
    return t


def eval_rank_span(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous share [lo, hi) of n items for this rank (sizes differ by at most one)."""
    return n * rank // world, n * (rank + 1) // world


def _bpb_batches(windows: list, n_targets: int, seq_len: int, batch_seqs: int):
    """Consecutive windows grouped up to batch_seqs, never mixing window lengths."""
    batch, blen = [], -1
    for w in windows:
        wl = min(seq_len, n_targets - w[0])
        if batch and (wl != blen or len(batch) == batch_seqs):
            yield batch, blen
            batch = []
        batch.append(w)
        blen = wl
    if batch:
        yield batch, blen


def score_windows(model: torch.nn.Module, tokens: torch.Tensor, windows: list, seq_len: int,
                  batch_seqs: int, tables: ByteTables, acc: BpbAccumulator, device: torch.device,
                  scorer: Callable | None = None, recorder: ScoreRecorder | None = None,
                  events: Any = None, progress: EvalProgress | None = None,
                  progress_offset: int = 0) -> int:
    """Score this rank's windows in batches into acc (and recorder/events); returns batches run.

    Plain scoring runs under torch.inference_mode; a scorer with `needs_grad` (SLOT) runs
    under no_grad and enables grad only for its own parameters.
    """
    scorer = scorer or plain_token_nll
    n_targets = tokens.numel() - 1
    ctx = torch.no_grad if getattr(scorer, "needs_grad", False) else torch.inference_mode
    done = 0
    for batch, wl in _bpb_batches(windows, n_targets, seq_len, batch_seqs):
        x = torch.stack([tokens[s:s + wl] for s, _, _ in batch]).to(device, non_blocking=True)
        y = torch.stack([tokens[s + 1:s + wl + 1] for s, _, _ in batch]).to(device, non_blocking=True)
        lo = torch.tensor([a - s for s, a, _ in batch], device=device)
        hi = torch.tensor([b - s for s, _, b in batch], device=device)
        with ctx(), compute_autocast(device):
            nll = scorer(model, x, y, lo, hi)
        with torch.no_grad():
            pos = torch.arange(wl, device=device)[None, :]
            mask = (pos >= lo[:, None]) & (pos < hi[:, None])
            nb = None
            if hasattr(tables, "window_bytes"):
                nb = tables.window_bytes(torch.tensor([s for s, _, _ in batch], device=device), wl)
            acc.add(nll.detach(), x, y, tables, mask, nbytes=nb)
        for k, (s, a, b) in enumerate(batch):
            if recorder is not None:
                recorder.add(a, nll[k, a - s:b - s])
            eval_emit_event(events, "score", a, b)
        done += len(batch)
        if progress is not None:
            progress.step(progress_offset + done, acc)
    return done


def eval_plain(model: torch.nn.Module, val_tokens: Any, seq_len: int, batch_tokens: int,
               tables: Any, comm: Comm, device: torch.device, log: Callable | None = None,
               recorder: ScoreRecorder | None = None, budget_seconds: float = 0.0,
               scorer: Callable | None = None, whole_batch_windows: int = 0) -> dict:
    """Non-overlapping windows of seq_len (a short last one if needed), split over ranks.

    whole_batch_windows > 0 keeps only a multiple of that many of each rank's windows
    (eval.plain_whole_batches: #1855's eval_val drops each rank's partial last batch); when
    some rank would keep none (where the record reports NaN), every window is scored."""
    t0 = time.perf_counter()
    tokens = val_tokens_tensor(val_tokens)
    n = tokens.numel() - 1
    if seq_len <= 0:
        raise EvalInputError(f"eval seq_len must be > 0, got {seq_len}; set eval.seq_len")
    tables = as_byte_tables(tables, device)
    windows = [(s, s, min(s + seq_len, n)) for s in range(0, n, seq_len)]
    lo, hi = eval_rank_span(len(windows), comm.rank, comm.world_size)
    mine = windows[lo:hi]
    if 0 < whole_batch_windows <= len(windows) // comm.world_size:
        mine = mine[:len(mine) // whole_batch_windows * whole_batch_windows]
    per_rank = max(1, batch_tokens // (seq_len * comm.world_size))
    acc = BpbAccumulator(device)
    prog = EvalProgress(log if comm.is_main else None, "plain", "windows", len(mine), budget_seconds)
    score_windows(model, tokens, mine, seq_len, per_rank, tables, acc, device, scorer=scorer,
                  recorder=recorder, progress=prog)
    acc.reduce(comm)
    if recorder is not None:
        recorder.reduce(comm, device)
    return acc.result(time.perf_counter() - t0)
