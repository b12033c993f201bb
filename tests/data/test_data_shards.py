import errno
import os

import numpy as np
import pytest
import torch

from pgolf.atomic import AtomicWriteError
from pgolf.data.shards import SHARD_HEADER_BYTES, SHARD_MAGIC, ShardError, load_shard, read_header, write_shard


def _raw_shard(path, header_vals, ntok_bytes):
    header = np.zeros(256, dtype="<i4")
    header[: len(header_vals)] = header_vals
    with open(path, "wb") as fh:
        fh.write(header.tobytes())
        fh.write(b"\x01\x00" * ntok_bytes)


def test_round_trip_mmap_and_copy(tmp_path):
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 65536, size=1000)
    p = tmp_path / "a.bin"
    write_shard(str(p), toks)
    assert p.stat().st_size == SHARD_HEADER_BYTES + 2 * 1000
    raw = np.fromfile(p, dtype="<i4", count=3)
    assert raw.tolist() == [SHARD_MAGIC, 1, 1000]
    assert read_header(str(p)) == 1000
    for mm in (True, False):
        got = load_shard(str(p), mmap=mm)
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got.astype(np.int64), toks)


def test_write_accepts_torch_tensor(tmp_path):
    p = tmp_path / "t.bin"
    write_shard(p, torch.tensor([1, 2, 65535]))
    assert load_shard(p).tolist() == [1, 2, 65535]


@pytest.mark.parametrize("vals,ntok,needle", [
    ([123, 1, 4], 4, "bad magic 123"),
    ([SHARD_MAGIC, 2, 4], 4, "unsupported version 2"),
    ([SHARD_MAGIC, 1, 5], 4, "size mismatch: expected 1034 bytes for 5 tokens got 1032"),
    ([SHARD_MAGIC, 1, 3], 4, "expected 1030 bytes for 3 tokens got 1032"),
    ([SHARD_MAGIC, 1, 0], 0, "empty"),
])
def test_header_errors(tmp_path, vals, ntok, needle):
    p = tmp_path / "bad.bin"
    _raw_shard(p, vals, ntok)
    with pytest.raises(ShardError) as ei:
        load_shard(str(p))
    msg = str(ei.value)
    assert needle in msg and str(p) in msg and "\n" not in msg
    assert "pgolf data fineweb" in msg


def test_truncated_and_too_short_and_empty(tmp_path):
    p = tmp_path / "x.bin"
    write_shard(p, np.arange(100))
    data = p.read_bytes()
    p.write_bytes(data[:-3])
    with pytest.raises(ShardError, match="size mismatch: expected 1224 bytes for 100 tokens got 1221"):
        read_header(p)
    p.write_bytes(data[:500])
    with pytest.raises(ShardError, match="too short for header"):
        read_header(p)
    p.write_bytes(b"")
    with pytest.raises(ShardError, match="file is empty"):
        read_header(p)
    with pytest.raises(ShardError, match="cannot be read"):
        read_header(tmp_path / "missing.bin")


@pytest.mark.parametrize("toks,needle", [
    (np.array([], dtype=np.int64), "empty shard"),
    (np.array([0, 65536]), "token id 65536"),
    (np.array([5, -1]), "token id -1"),
    (np.array([0.5, 1.0]), "need integers"),
])
def test_write_refuses_bad_tokens(tmp_path, toks, needle):
    p = tmp_path / "w.bin"
    with pytest.raises(ShardError, match=needle):
        write_shard(p, toks)
    assert os.listdir(tmp_path) == []


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "s.bin"
    write_shard(p, np.arange(10))
    write_shard(p, np.arange(20))
    assert read_header(p) == 20
    assert sorted(os.listdir(tmp_path)) == ["s.bin"]


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "s.bin"
    write_shard(p, np.arange(10))

    def boom(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(AtomicWriteError, match="no space left") as e:
        write_shard(p, np.arange(30))
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    monkeypatch.undo()
    assert read_header(p) == 10
    assert sorted(os.listdir(tmp_path)) == ["s.bin"]
