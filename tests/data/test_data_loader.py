import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.data.loader import DataLoaderError, DistributedTokenLoader, TokenStream, find_shards, load_validation_tokens
from pgolf.data.shards import write_shard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shard_helpers import position_shards  # noqa: E402


def _make(tmp_path, sizes, prefix="fineweb_train_"):
    return position_shards(tmp_path, sizes, prefix)


def test_find_shards_sorted_and_error(tmp_path):
    files = _make(tmp_path, [5, 5, 5])
    assert find_shards(str(tmp_path / "fineweb_train_*.bin")) == files
    with pytest.raises(DataLoaderError, match="no shards match .*nothing_\\*"):
        find_shards(str(tmp_path / "nothing_*.bin"))


def test_stream_crosses_shards_and_wraps(tmp_path):
    files = _make(tmp_path, [7, 5, 3])  # 15 tokens: 0..14
    s = TokenStream(files)
    assert s.take(10).tolist() == list(range(10))
    got = s.take(9)
    assert got.dtype == torch.int64
    assert got.tolist() == [10, 11, 12, 13, 14, 0, 1, 2, 3]
    assert s.state()["epoch"] == 1
    assert s.take(40).tolist() == [(4 + i) % 15 for i in range(40)]


def test_stream_state_round_trip(tmp_path):
    files = _make(tmp_path, [7, 5, 3])
    a = TokenStream(files)
    a.take(9)
    st = a.state()
    expect = a.take(20).tolist()
    b = TokenStream(files)
    b.load_state(st)
    assert b.take(20).tolist() == expect
    with pytest.raises(DataLoaderError, match="shard_index 9"):
        b.load_state({"shard_index": 9, "position": 0})


def _gather(tmp_path, world, accum, steps, G, T):
    files = sorted(str(p) for p in tmp_path.glob("fineweb_train_*.bin"))
    loaders = [DistributedTokenLoader(files, r, world, "cpu") for r in range(world)]
    out = []  # per step: [micro][rank] -> (x, y)
    for _ in range(steps):
        step = []
        for _m in range(accum):
            step.append([ld.next_batch(G, T, accum) for ld in loaders])
        out.append(step)
    return out


def test_world_sizes_see_identical_tokens(tmp_path):
    _make(tmp_path, [300, 200, 137])
    G, T, K = 64, 8, 2  # global tokens, seq len, accumulation per rank at world 4 = 2
    ref = _gather(tmp_path, 1, 4 * K, 3, G, T)
    ref_seq = [xy for step in ref for micro in step for xy in micro]
    for world in (2, 4):
        got = _gather(tmp_path, world, 4 * K // world, 3, G, T)
        # micro-step m of rank r at world W == micro-step m*W + r of world 1
        seq = [xy for step in got for micro in step for xy in micro]
        assert len(seq) == len(ref_seq)
        for (x, y), (rx, ry) in zip(seq, ref_seq):
            assert x.shape == (G // (4 * K) // T, T)
            assert torch.equal(x, rx) and torch.equal(y, ry)


def test_rank_slices_disjoint_and_shifted(tmp_path):
    _make(tmp_path, [1000])
    loaders = [DistributedTokenLoader(str(tmp_path / "fineweb_train_*.bin"), r, 4) for r in range(4)]
    batches = [ld.next_batch(128, 16, 2) for ld in loaders]
    spans = []
    for r, (x, y) in enumerate(batches):
        assert x.shape == (1, 16)
        assert torch.equal(x.flatten()[1:], y.flatten()[:-1])
        assert x.flatten()[0].item() == r * 17
        spans.append(set(x.flatten().tolist()) | set(y.flatten().tolist()))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not spans[i] & spans[j]
    assert loaders[0].state() == {"shard_index": 0, "position": 68, "epoch": 0, "num_shards": 1}


@pytest.mark.parametrize("G,T,K,needle", [
    (101, 8, 1, "not divisible by world_size\\*grad_accum_steps = 2"),
    (40, 8, 2, "not a positive multiple of seq_len 8"),
])
def test_batch_geometry_errors(tmp_path, G, T, K, needle):
    files = _make(tmp_path, [100])
    ld = DistributedTokenLoader(files, 0, 2)
    with pytest.raises(DataLoaderError, match=needle):
        ld.next_batch(G, T, K)


def test_loader_state_passthrough(tmp_path):
    files = _make(tmp_path, [50, 50])
    a = DistributedTokenLoader(files, 1, 2)
    a.next_batch(32, 8, 1)
    st = a.state()
    nxt = a.next_batch(32, 8, 1)
    b = DistributedTokenLoader(files, 1, 2)
    b.load_state(st)
    got = b.next_batch(32, 8, 1)
    assert torch.equal(got[0], nxt[0]) and torch.equal(got[1], nxt[1])


def test_refuses_validation_shards(tmp_path):
    _make(tmp_path, [20])
    _make(tmp_path, [20], prefix="fineweb_val_")
    with pytest.raises(DataLoaderError, match="validation shard .*fineweb_val_000000.bin"):
        DistributedTokenLoader(str(tmp_path / "fineweb_*.bin"), 0, 1)
    other = tmp_path / "heldout.bin"
    write_shard(other, np.arange(20))
    train_pat = str(tmp_path / "*t*.bin")  # matches heldout.bin and the train shard
    with pytest.raises(DataLoaderError, match="heldout.bin"):
        DistributedTokenLoader(train_pat, 0, 1, val_pattern=str(tmp_path / "held*.bin"))
    ok = DistributedTokenLoader(str(tmp_path / "fineweb_train_*.bin"), 0, 1,
                                val_pattern=str(tmp_path / "fineweb_val_*.bin"))
    assert ok.next_batch(8, 8, 1)[0].shape == (1, 8)


def test_validation_tokens_truncation(tmp_path):
    _make(tmp_path, [30, 13], prefix="fineweb_val_")
    v = load_validation_tokens(str(tmp_path / "fineweb_val_*.bin"), 8)
    assert v.dtype == torch.int64
    assert v.tolist() == list(range(41))  # ((43-1)//8)*8 + 1
    assert load_validation_tokens(str(tmp_path / "fineweb_val_*.bin"), 42).numel() == 43
    with pytest.raises(DataLoaderError, match="43 tokens, fewer than seq_len\\+1 = 44"):
        load_validation_tokens(str(tmp_path / "fineweb_val_*.bin"), 43)
