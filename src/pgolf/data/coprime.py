"""Coprime-stride multi-shard window order (challenge PRs #726 / #1058, used by record #1876).

Each shard is cut into blocks of `window` (= seq_len + 1) tokens. Within an epoch a shard's
blocks are visited as (offset + k * stride) mod n with gcd(stride, n) = 1, which is a
permutation: every block exactly once, with no short cycle. The shard of each draw is
picked with probability proportional to its unvisited blocks, so batches mix shards and
all shards run out together. Every random choice is a hash of (seed, epoch, ...), so the
whole order follows from the seed and a few counters: the state is plain ints.
"""

import math

import numpy as np

from pgolf.errors import PgolfError

MASK64 = (1 << 64) - 1
GOLDEN64 = 0x9E3779B97F4A7C15
# Tags keep the hash streams of different choices apart.
TAG_OFFSET, TAG_STRIDE, TAG_DRAW = 1, 2, 3


class SamplerStateError(PgolfError, ValueError):
    """A coprime sampler state that does not fit these shards, this window or this seed."""


def mix64(x: int) -> int:
    """splitmix64 finalizer: a well-spread 64-bit hash of a 64-bit integer."""
    x = (x + GOLDEN64) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def hash_key(*parts: int) -> int:
    h = 0
    for p in parts:
        h = mix64(h ^ (int(p) & MASK64))
    return h


def coprime_stride(n: int, h: int) -> int:
    """A stride in [1, n) coprime to n, starting from a hashed candidate (1 when n <= 2)."""
    if n <= 2:
        return 1
    c = 1 + h % (n - 1)
    while math.gcd(c, n) != 1:
        c = c + 1 if c < n - 1 else 1
    return c


class CoprimeWindowSampler:
    """(shard, start) windows of `window` tokens; each block of each shard once per epoch."""

    def __init__(self, lengths: list[int], window: int, seed: int) -> None:
        if window < 2:
            raise SamplerStateError(f"window {window} tokens is too short; need seq_len >= 1")
        self.window = int(window)
        self.seed = int(seed)
        self.blocks = [int(n) // self.window for n in lengths]
        if not any(self.blocks):
            raise SamplerStateError(
                f"no shard holds a full window of {self.window} tokens (longest {max(lengths, default=0)}); "
                "use a shorter run.train_seq_len or longer shards")
        self.total = sum(self.blocks)
        self.epoch = 0
        self.visited = [0] * len(self.blocks)
        self._plan_epoch = -1

    def plan(self, epoch: int) -> tuple[list[int], list[int]]:
        """Per-shard (offsets, strides) of an epoch; strides are coprime to the block counts."""
        offsets = [hash_key(self.seed, epoch, s, TAG_OFFSET) % n if n else 0 for s, n in enumerate(self.blocks)]
        strides = [coprime_stride(n, hash_key(self.seed, epoch, s, TAG_STRIDE)) if n else 1
                   for s, n in enumerate(self.blocks)]
        return offsets, strides

    def _ensure_plan(self) -> None:
        if self._plan_epoch != self.epoch:
            self.offsets, self.strides = self.plan(self.epoch)
            self.draw_key = hash_key(self.seed, self.epoch, TAG_DRAW)
            self._plan_epoch = self.epoch

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `count` windows as (shard indices, start token offsets), int64 arrays."""
        shards = np.empty(count, dtype=np.int64)
        starts = np.empty(count, dtype=np.int64)
        for i in range(count):
            shards[i], starts[i] = self._draw()
        return shards, starts

    def _draw(self) -> tuple[int, int]:
        self._ensure_plan()
        done = sum(self.visited)
        left = self.total - done
        # Draw k of the epoch: a uniform pick among the unvisited blocks of all shards, so a
        # shard's chance is its share of what is left (all shards finish the epoch together).
        h = mix64((self.draw_key + done * GOLDEN64) & MASK64)
        r = (h * left) >> 64
        s = 0
        for s, n in enumerate(self.blocks):
            rem = n - self.visited[s]
            if r < rem:
                break
            r -= rem
        k = self.visited[s]
        block = (self.offsets[s] + k * self.strides[s]) % self.blocks[s]
        self.visited[s] = k + 1
        if left == 1:
            self.epoch += 1
            self.visited = [0] * len(self.blocks)
        return s, block * self.window

    def state(self) -> dict:
        return {"seed": self.seed, "window": self.window, "epoch": self.epoch,
                "visited": list(self.visited), "blocks": list(self.blocks)}

    def load_state(self, state: dict) -> None:
        if int(state["window"]) != self.window or list(state["blocks"]) != self.blocks:
            raise SamplerStateError(
                "coprime loader state was saved for other shards or another run.train_seq_len; "
                "resume with the same data.path, data.train_pattern and run.train_seq_len")
        if int(state["seed"]) != self.seed:
            raise SamplerStateError(f"coprime loader state was saved with run.seed {int(state['seed'])}, "
                                    f"this run has {self.seed}; resume with the same run.seed")
        visited = [int(v) for v in state["visited"]]
        if any(not 0 <= v <= n for v, n in zip(visited, self.blocks)) or sum(visited) >= max(self.total, 1):
            raise SamplerStateError("coprime loader state has visit counts outside the shards' blocks; "
                                    "the checkpoint does not belong to these shards")
        self.epoch = int(state["epoch"])
        self.visited = visited
