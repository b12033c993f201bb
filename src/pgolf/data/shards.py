"""The official token shard format: a 256 x int32 little-endian header, then uint16 tokens."""

import os

import numpy as np

from pgolf.atomic import atomic_write
from pgolf.errors import PgolfError

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
SHARD_HEADER_BYTES = SHARD_HEADER_INTS * 4
SHARD_REDOWNLOAD_HINT = "re-download it with `pgolf data fineweb` or regenerate it"


class ShardError(PgolfError, ValueError):
    """A token shard that is malformed or cannot be written."""


def _fail(path: str, problem: str, fix: str = SHARD_REDOWNLOAD_HINT) -> ShardError:
    err = ShardError(f"shard {path}: {problem}; {fix}")
    err.problem = problem  # lets callers re-word the message for a file they name differently
    return err


def read_header(path: str) -> int:
    """Validate a shard's header and size; return its token count."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            raw = fh.read(SHARD_HEADER_BYTES)
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})",
                          "check the path or data.path") from None
    if size == 0:
        raise _fail(path, "file is empty")
    if len(raw) < SHARD_HEADER_BYTES:
        raise _fail(path, f"too short for header ({size} bytes, need {SHARD_HEADER_BYTES})")
    header = np.frombuffer(raw, dtype="<i4")
    if int(header[0]) != SHARD_MAGIC:
        raise _fail(path, f"bad magic {int(header[0])} (expected {SHARD_MAGIC}); "
                                "not a token shard or corrupted")
    if int(header[1]) != SHARD_VERSION:
        raise _fail(path, f"unsupported version {int(header[1])} (expected {SHARD_VERSION})")
    count = int(header[2])
    if count < 0:
        raise _fail(path, f"negative token count {count} in header")
    if count == 0:
        raise _fail(path, "header says the shard is empty (0 tokens)")
    expected = SHARD_HEADER_BYTES + 2 * count
    if size != expected:
        raise _fail(path, f"size mismatch: expected {expected} bytes for {count} tokens "
                                f"got {size} (truncated or corrupted)")
    return count


def load_shard(path: str, mmap: bool = True) -> np.ndarray:
    """Return the shard's tokens as uint16 (a read-only memmap unless mmap=False)."""
    path = os.fspath(path)
    count = read_header(path)
    if mmap:
        return np.memmap(path, dtype="<u2", mode="r", offset=SHARD_HEADER_BYTES, shape=(count,))
    with open(path, "rb") as fh:
        fh.seek(SHARD_HEADER_BYTES)
        data = np.frombuffer(fh.read(2 * count), dtype="<u2")
    return data.astype(np.uint16)


def _as_uint16(path: str, tokens) -> np.ndarray:
    # torch tensors and lists are accepted too; check range before narrowing so
    # out-of-range ids are reported instead of silently wrapping.
    if hasattr(tokens, "detach"):
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size == 0:
        raise _fail(path, "refusing to write an empty shard (0 tokens)",
                          "pass at least one token")
    if not np.issubdtype(arr.dtype, np.integer):
        raise _fail(path, f"tokens have dtype {arr.dtype}, need integers",
                          "pass integer token ids")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= 65536:
        bad = lo if lo < 0 else hi
        raise _fail(path, f"token id {bad} does not fit uint16 [0, 65535]",
                          "use a vocabulary smaller than 65536 or fix the token ids")
    return arr.astype("<u2")


def write_shard(path: str, tokens: np.ndarray) -> None:
    """Write tokens as an official shard, atomically (pgolf.atomic)."""
    path = os.fspath(path)
    data = _as_uint16(path, tokens)
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, data.size
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: (f.write(header.tobytes()), f.write(data.tobytes())))
