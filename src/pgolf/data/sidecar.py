"""Per-token byte sidecars: the original-text bytes behind each validation token.

A sidecar sits beside each validation shard (fineweb_val_000003.bin ->
fineweb_val_bytes_000003.bin, the #1855 record's naming and layout): the official shard
format with one uint16 per token, the UTF-8 bytes of the original text that token stands
for (0 for BOS). With a text transform such as CaseOps the tokenizer's own byte tables
would charge the transformed text; the sidecar charges the original, exactly.
"""

import os
import re

import numpy as np
import torch

from pgolf.data.shards import load_shard, read_header, write_shard
from pgolf.errors import PgolfError

SIDECAR_TAG = "bytes_"
RETOKENIZE_MANIFEST = "retokenize_manifest.json"   # written by `pgolf data retokenize`
_SIDECAR_SHARD_NAME = re.compile(r"^(?P<stem>.*_)(?P<index>\d+)\.bin$")


class SidecarError(PgolfError, ValueError):
    """A byte sidecar that is missing, malformed or does not match its token shard."""


def sidecar_path(shard_path: str) -> str:
    """The sidecar file of a token shard: <prefix>_NNNNNN.bin -> <prefix>_bytes_NNNNNN.bin."""
    folder, name = os.path.split(os.fspath(shard_path))
    m = _SIDECAR_SHARD_NAME.match(name)
    if m is None:
        raise SidecarError(f"shard {shard_path}: name does not end in _<number>.bin, so it has no "
                           "sidecar name; name shards like fineweb_val_000000.bin")
    return os.path.join(folder, f"{m['stem']}{SIDECAR_TAG}{m['index']}.bin")


def is_sidecar(path: str) -> bool:
    """True for a sidecar file name (which a glob like fineweb_val_*.bin also matches)."""
    m = _SIDECAR_SHARD_NAME.match(os.path.basename(os.fspath(path)))
    return m is not None and m["stem"].endswith("_" + SIDECAR_TAG)


def token_shards_only(files: list[str]) -> list[str]:
    """files without the sidecars among them: what a validation glob should read as tokens."""
    return [f for f in files if not is_sidecar(f)]


def write_sidecar(shard_path: str, byte_counts) -> str:
    """Write the sidecar of shard_path (one count per token of that shard); returns its path."""
    counts = np.asarray(byte_counts, dtype=np.int64).reshape(-1)
    path = sidecar_path(shard_path)
    if counts.size and (counts.min() < 0 or counts.max() > 65535):
        raise SidecarError(f"sidecar {path}: a token covers {int(counts.max())} bytes, more than "
                           "uint16 holds; split such documents before tokenizing")
    write_shard(path, counts)
    return path


def load_sidecar(shard_path: str) -> np.ndarray | None:
    """The shard's per-token byte counts (int64), None if it has no sidecar file."""
    path = sidecar_path(shard_path)
    if not os.path.exists(path):
        return None
    n_tokens, n_counts = read_header(shard_path), read_header(path)
    if n_tokens != n_counts:
        raise SidecarError(f"sidecar {path}: {n_counts} byte counts for {n_tokens} tokens in "
                           f"{os.path.basename(shard_path)}; regenerate both with `pgolf data retokenize`")
    return np.asarray(load_shard(path, mmap=False), dtype=np.int64)


def load_validation_bytes(files: list[str], n_tokens: int) -> torch.Tensor | None:
    """Per-token original bytes of the concatenated validation shards, cut to n_tokens
    (the length load_validation_tokens kept); None when no shard has a sidecar."""
    files = token_shards_only(list(files))
    parts = [load_sidecar(f) for f in files]
    missing = [f for f, p in zip(files, parts) if p is None]
    if len(missing) == len(files):
        return None
    if missing:
        raise SidecarError(f"validation shard {missing[0]} has no byte sidecar while others do: "
                           f"regenerate {sidecar_path(missing[0])} with `pgolf data retokenize`")
    counts = np.concatenate(parts)
    if counts.size < n_tokens:
        raise SidecarError(f"byte sidecars hold {counts.size} counts for {n_tokens} validation tokens; "
                           "regenerate them with `pgolf data retokenize`")
    return torch.from_numpy(np.ascontiguousarray(counts[:n_tokens]))


class SidecarBytes:
    """Byte accounting from a sidecar: target i (token i+1) is worth bytes[i+1].

    Offers ByteTables' interface plus window_bytes(x, y, starts), which eval needs because
    the count belongs to a position, not to a (previous, target) token pair.
    """

    def __init__(self, token_bytes: torch.Tensor, vocab_size: int, device: torch.device | str = "cpu"):
        self.bytes = torch.as_tensor(token_bytes, dtype=torch.int64).to(device)
        self.device = torch.device(device)
        self._vocab = int(vocab_size)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def to(self, device: torch.device | str) -> "SidecarBytes":
        dev = torch.device(device)
        return self if dev == self.device else SidecarBytes(self.bytes, self._vocab, dev)

    def window_bytes(self, starts: torch.Tensor, width: int) -> torch.Tensor:
        """[B, width] bytes of the targets of windows starting at token `starts` (int64)."""
        pos = starts.to(self.device).long()[:, None] + torch.arange(1, width + 1, device=self.device)
        return self.bytes[pos]

    def total(self, lo: int = 0, hi: int | None = None) -> int:
        """Bytes of targets [lo, hi) (all scored targets by default)."""
        hi = self.bytes.numel() - 1 if hi is None else hi
        return int(self.bytes[lo + 1:hi + 1].sum())
