"""Token streams over shards: the training stream (sequential or coprime), per-rank batching, validation."""

import glob
import os

import numpy as np
import torch

from pgolf.data.coprime import CoprimeWindowSampler
from pgolf.data.shards import load_shard, read_header
from pgolf.data.sidecar import token_shards_only
from pgolf.errors import PgolfError
from pgolf.hw import pinned_staging


class DataLoaderError(PgolfError, ValueError):
    """Bad data-loading input: missing shards, bad batch geometry, train/val overlap."""


def find_shards(pattern: str) -> list[str]:
    """Sorted list of files matching a glob; raises naming the pattern when nothing matches."""
    pattern = os.path.expanduser(os.fspath(pattern))
    files = sorted(f for f in glob.glob(pattern) if os.path.isfile(f))
    if not files:
        raise DataLoaderError(
            f"no shards match {pattern!r}; check data.path / the pattern, or fetch data with "
            "`pgolf data fineweb` (leave data.path empty to use the embedded corpus)")
    return files


class TokenStream:
    """Reads shards in order, packing across boundaries; wraps to the first shard at the end."""

    def __init__(self, files: list[str]) -> None:
        if isinstance(files, (str, os.PathLike)):
            files = [os.fspath(files)]
        if not files:
            raise DataLoaderError("TokenStream needs at least one shard; pass a non-empty file list")
        self.files = [os.fspath(f) for f in files]
        for f in self.files:
            read_header(f)  # fail at construction, not mid-run
        self.shard_index = 0
        self.position = 0
        self.epoch = 0
        self._tokens = load_shard(self.files[0])

    def _open(self, index: int) -> None:
        self.shard_index = index
        self._tokens = load_shard(self.files[index])

    def take_numpy(self, n: int) -> np.ndarray:
        """Next n tokens as an int64 numpy array."""
        if n < 0:
            raise DataLoaderError(f"cannot take {n} tokens; n must be >= 0")
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            avail = len(self._tokens) - self.position
            if avail <= 0:
                nxt = self.shard_index + 1
                if nxt == len(self.files):
                    nxt = 0
                    self.epoch += 1
                self._open(nxt)
                self.position = 0
                continue
            k = min(avail, n - filled)
            out[filled:filled + k] = self._tokens[self.position:self.position + k]
            filled += k
            self.position += k
        return out

    def take(self, n: int) -> torch.Tensor:
        """Next n tokens as a CPU LongTensor."""
        return torch.from_numpy(self.take_numpy(n))

    def state(self) -> dict:
        return {"shard_index": self.shard_index, "position": self.position, "epoch": self.epoch,
                "num_shards": len(self.files)}

    def load_state(self, state: dict) -> None:
        idx, pos = int(state["shard_index"]), int(state["position"])
        if not 0 <= idx < len(self.files):
            raise DataLoaderError(f"stream state shard_index {idx} is outside the {len(self.files)} "
                                  "shards found; resume with the same data.path and pattern")
        self._open(idx)
        if not 0 <= pos <= len(self._tokens):
            raise DataLoaderError(f"stream state position {pos} is outside shard {self.files[idx]} "
                                  f"({len(self._tokens)} tokens); resume with the same shards")
        self.position = pos
        self.epoch = int(state.get("epoch", 0))


class ShardSpanStream:
    """Spans that never cross a shard's end (#1855's stream batches): each shard is read from
    its first BOS; a span that would run past the end is taken from the next shard's first BOS
    instead (the tail is skipped); after the last shard it wraps to the first.

    take_micro hands out one optimizer step's tokens (all ranks, all micro-steps) as one span
    in turns, so where a shard's tail is skipped does not depend on the world size: the record
    ran 8 ranks without accumulation, one 8-micro-batch span a step.
    """

    def __init__(self, files: list[str], bos_id: int) -> None:
        self.files, self.bos_id = [os.fspath(f) for f in files], int(bos_id)
        for f in self.files:
            read_header(f)
        self.epoch = 0
        self._open(0)
        self.block, self.slot, self.micro, self.block_start = None, 0, 0, {}

    def take_micro(self, n: int, micro_steps: int) -> torch.Tensor:
        """The next n tokens of the current step's span of n * micro_steps tokens."""
        if self.block is None or self.slot * n >= len(self.block) or n != self.micro:
            self.block = None
            self.block_start = self.state()
            self.block, self.slot, self.micro = self.take_numpy(n * micro_steps), 0, n
        self.slot += 1
        return torch.from_numpy(self.block[(self.slot - 1) * n:self.slot * n])

    def _open(self, index: int) -> None:
        self.shard_index = index
        self._tokens = load_shard(self.files[index])
        first = np.flatnonzero(self._tokens == self.bos_id)[:1]
        if not len(first):
            raise DataLoaderError(f"shard {self.files[index]} holds no BOS token (model.bos_id={self.bos_id}); "
                                  "data.packing=stream starts every shard at a document: use data.packing rows")
        self.first_bos = self.position = int(first[0])

    def take_numpy(self, n: int) -> np.ndarray:
        tried = 0
        while self.position + n > len(self._tokens):
            tried += 1
            if tried > len(self.files):
                raise DataLoaderError(f"no shard holds {n} tokens after its first BOS; lower "
                                      "run.train_batch_tokens or use data.packing rows")
            nxt = self.shard_index + 1
            if nxt == len(self.files):
                nxt, self.epoch = 0, self.epoch + 1
            self._open(nxt)
        out = np.asarray(self._tokens[self.position:self.position + n], dtype=np.int64)
        self.position += n
        return out

    def take(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.take_numpy(n))

    def state(self) -> dict:
        if self.block is not None and self.slot * self.micro < len(self.block):
            # Saved inside a step: resuming takes the step's span again and skips what was used.
            return {**self.block_start, "slot": self.slot, "micro": self.micro, "block": len(self.block)}
        return {"packing": "stream", "shard_index": self.shard_index, "position": self.position,
                "epoch": self.epoch, "num_shards": len(self.files)}

    def load_state(self, state: dict) -> None:
        idx, pos = int(state["shard_index"]), int(state["position"])
        if not 0 <= idx < len(self.files):
            raise DataLoaderError(f"stream state shard_index {idx} is outside the {len(self.files)} "
                                  "shards found; resume with the same data.path and pattern")
        self._open(idx)
        if not self.first_bos <= pos <= len(self._tokens):
            raise DataLoaderError(f"stream state position {pos} is outside shard {self.files[idx]} "
                                  f"({len(self._tokens)} tokens); resume with the same shards")
        self.position, self.epoch = pos, int(state.get("epoch", 0))
        self.block, self.slot = None, 0
        if int(state.get("slot", 0)) > 0:
            self.take_micro(int(state["micro"]), int(state["block"]) // int(state["micro"]))
            self.slot = int(state["slot"])


def _check_not_val(files: list[str], val_pattern: str | None) -> None:
    val_files = set()
    if val_pattern:
        val_files = {os.path.abspath(f) for f in glob.glob(os.path.expanduser(val_pattern))}
    for f in files:
        base = os.path.basename(f)
        if "_val_" in base:
            raise DataLoaderError(
                f"training files include validation shard {f}; training on validation data is not "
                "allowed: fix data.train_pattern so it matches only train shards")
        if os.path.abspath(f) in val_files:
            # Named like a train shard: the validation pattern is what reaches too far.
            raise DataLoaderError(
                f"data.val_pattern {val_pattern!r} also matches training shard {f}; fix data.val_pattern "
                "so it matches only validation shards (e.g. fineweb_val_*.bin)")


def check_token_range(tokens: np.ndarray, vocab_size: int, source: str) -> None:
    """Every id must index the embedding table; a bad id would crash deep inside the model."""
    if vocab_size and len(tokens):
        top = int(tokens.max())
        if top >= vocab_size:
            raise DataLoaderError(f"{source} holds token id {top}, outside model.vocab_size {vocab_size}: "
                                  "use shards made with the model's tokenizer (or set model.vocab_size)")


class DistributedTokenLoader:
    """Per-rank (x, y) batches from one shared stream, identical across world sizes.

    sequential: each call consumes (local_tokens + 1) * world_size tokens and rank r keeps
    slice r, so one process with accumulation k*W reads the same tokens as W processes with
    accumulation k. coprime: each call draws world_size * rows windows of seq_len + 1 tokens
    from a CoprimeWindowSampler and rank r keeps its contiguous run of rows, same invariance.
    packing="stream" (sequential only): spans come from a ShardSpanStream and each micro-batch
    is one row [1, local_tokens], documents kept apart by the model (doc_mask, doc_max_len).
    """

    def __init__(self, pattern_or_files, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", val_pattern: str | None = None,
                 vocab_size: int = 0, sampling: str = "sequential", seed: int = 0, packing: str = "rows",
                 bos_id: int = 1) -> None:
        if isinstance(pattern_or_files, (str, os.PathLike)):
            files = find_shards(os.fspath(pattern_or_files))
        else:
            files = [os.fspath(f) for f in pattern_or_files]
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataLoaderError(f"rank {rank} / world_size {world_size} is invalid; "
                                  "need 0 <= rank < world_size")
        if sampling not in ("sequential", "coprime"):
            raise DataLoaderError(f"data.sampling {sampling!r} is not one of 'sequential', 'coprime'")
        if packing not in ("rows", "stream") or (packing == "stream" and sampling != "sequential"):
            raise DataLoaderError(f"data.packing {packing!r} with data.sampling {sampling!r}: use rows, or "
                                  "stream with sequential sampling")
        _check_not_val(files, val_pattern)
        self.packing = packing
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.sampling, self.seed, self.files = sampling, int(seed), files
        self.stream = None
        if sampling == "sequential":
            self.stream = ShardSpanStream(files, bos_id) if packing == "stream" else TokenStream(files)
        # The window length is known only at the first batch, so the sampler is built then.
        # CoprimeWindowSampler is named only where it is built: a bundle for sequential
        # sampling leaves it out, so its one-line SamplerStateError refusals pass through unwrapped.
        self.sampler = None
        self.lengths = [read_header(f) for f in files] if sampling == "coprime" else ()
        self.shard_cache: dict[int, np.ndarray] = {}
        # The first shard in full now (a wrong tokenizer fails before training), then each
        # batch as it is taken (~0.1 ms per 100k tokens).
        self.vocab_size = vocab_size
        check_token_range(self.stream._tokens if self.stream else self.shard_tokens(0), vocab_size, files[0])
        self.staging = PinnedStaging(self.device) if pinned_staging(self.device) else None

    def local_tokens(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> int:
        parts = self.world_size * grad_accum_steps
        if seq_len < 1 or grad_accum_steps < 1:
            raise DataLoaderError(f"seq_len {seq_len} and grad_accum_steps {grad_accum_steps} "
                                  "must be >= 1")
        if global_tokens % parts:
            raise DataLoaderError(
                f"global batch {global_tokens} tokens is not divisible by world_size*grad_accum_steps"
                f" = {parts}; choose a batch that is a multiple of {parts * seq_len}")
        local = global_tokens // parts
        if local % seq_len or local == 0:
            raise DataLoaderError(
                f"per-micro-step batch {local} tokens (= {global_tokens} / {parts}) is not a positive "
                f"multiple of seq_len {seq_len}; use a global batch that is a multiple of "
                f"{parts * seq_len}")
        return local

    def next_batch(self, global_tokens: int, seq_len: int,
                   grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) LongTensors of shape [local_tokens // seq_len, seq_len] ([1, local_tokens] with
        packing=stream) on this loader's device."""
        local = self.local_tokens(global_tokens, seq_len, grad_accum_steps)
        if self.sampling == "coprime":
            return self.next_windows(local // seq_len, seq_len)
        span = local + 1
        if self.packing == "stream":
            chunk = self.stream.take_micro(span * self.world_size, grad_accum_steps)
        else:
            chunk = self.stream.take(span * self.world_size)
        mine = chunk[self.rank * span:(self.rank + 1) * span]
        check_token_range(mine.numpy(), self.vocab_size, f"shard {self.stream.files[self.stream.shard_index]}")
        if self.staging is not None:
            # One copy of the span; x and y are overlapping views of it on the device.
            mine = self.staging.to_device(mine)
        shape = (1, -1) if self.packing == "stream" else (-1, seq_len)
        return mine[:-1].reshape(shape), mine[1:].reshape(shape)

    def shard_tokens(self, index: int) -> np.ndarray:
        if index not in self.shard_cache:
            self.shard_cache[index] = load_shard(self.files[index])
        return self.shard_cache[index]

    def window_sampler(self, seq_len: int):
        if self.sampler is None:
            self.sampler = CoprimeWindowSampler(self.lengths, seq_len + 1, self.seed)
        elif self.sampler.window != seq_len + 1:
            raise DataLoaderError(f"seq_len changed from {self.sampler.window - 1} to {seq_len} mid-run; "
                                  "data.sampling='coprime' needs one run.train_seq_len for its window order")
        return self.sampler

    def next_windows(self, rows: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Coprime mode: the global batch's windows, this rank's contiguous run of `rows` of them."""
        shards, starts = self.window_sampler(seq_len).take(rows * self.world_size)
        mine = slice(self.rank * rows, (self.rank + 1) * rows)
        out = np.empty((rows, seq_len + 1), dtype=np.int64)
        for i, (s, a) in enumerate(zip(shards[mine].tolist(), starts[mine].tolist())):
            out[i] = self.shard_tokens(s)[a:a + seq_len + 1]
        if self.vocab_size and len(out) and int(out.max()) >= self.vocab_size:
            bad = int(np.argmax(out.max(axis=1) >= self.vocab_size))
            check_token_range(out[bad], self.vocab_size, f"shard {self.files[int(shards[mine][bad])]}")
        if self.staging is None:  # CPU: numpy copies the two halves far faster than torch's .contiguous()
            return (torch.from_numpy(np.ascontiguousarray(out[:, :-1])),
                    torch.from_numpy(np.ascontiguousarray(out[:, 1:])))
        # One copy of the windows; x and y are column slices of it, made contiguous on the device.
        batch = self.staging.to_device(torch.from_numpy(out))
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def state(self) -> dict:
        if self.stream is not None:
            return self.stream.state()
        if self.sampler is None:  # nothing drawn yet: the sampler's fresh start
            return {"sampling": "coprime", "seed": self.seed, "window": 0}
        return {"sampling": "coprime", **self.sampler.state()}

    def load_state(self, state: dict) -> None:
        saved = state.get("sampling", "sequential")
        packed = state.get("packing", "rows")
        if packed != self.packing:
            raise DataLoaderError(f"loader state was saved with data.packing={packed!r}, this run has "
                                  f"{self.packing!r}; resume with the same data.packing")
        if saved != self.sampling:
            raise DataLoaderError(f"loader state was saved with data.sampling={saved!r}, this run has "
                                  f"{self.sampling!r}; resume with the same data.sampling")
        if self.stream is not None:
            self.stream.load_state(state)
            return
        self.sampler = None  # window 0: saved before the first batch, a fresh start
        if int(state["window"]):
            self.window_sampler(int(state["window"]) - 1).load_state(state)


class PinnedStaging:
    """Reused pinned host buffers for asynchronous host-to-device copies.

    Pinning a fresh buffer per batch costs a page-locking allocation every step. Two
    buffers alternate; before one is refilled, the copy that last read it (recorded as a
    CUDA event) must have finished, which it has unless the host is two batches ahead.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffers: list[torch.Tensor] = []
        self.events: list = []
        self.turn = 0

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        if len(self.buffers) < 2 or self.buffers[0].numel() != host.numel():
            self.buffers = [torch.empty(host.shape, dtype=host.dtype, pin_memory=True) for _ in range(2)]
            self.events = [None, None]
        k, self.turn = self.turn, 1 - self.turn
        if self.events[k] is not None:
            self.events[k].synchronize()
        self.buffers[k].copy_(host)
        out = self.buffers[k].to(self.device, non_blocking=True)
        self.events[k] = torch.cuda.Event()
        self.events[k].record()
        return out


def load_validation_tokens(pattern: str, seq_len: int) -> torch.Tensor:
    """All validation shards concatenated, cut to a multiple of seq_len plus one token."""
    files = token_shards_only(pattern if isinstance(pattern, (list, tuple)) else find_shards(pattern))
    parts = [np.asarray(load_shard(f), dtype=np.int64) for f in files]
    tokens = np.concatenate(parts) if len(parts) > 1 else parts[0]
    n = len(tokens)
    if seq_len < 1 or n < seq_len + 1:
        raise DataLoaderError(
            f"validation data {pattern!r} has {n} tokens, fewer than seq_len+1 = {seq_len + 1}; "
            "use a shorter seq_len or more validation data")
    usable = ((n - 1) // seq_len) * seq_len + 1
    return torch.from_numpy(np.ascontiguousarray(tokens[:usable]))
