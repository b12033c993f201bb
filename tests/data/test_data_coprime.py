"""data.sampling='coprime': every window once per epoch, seeded order, world-size invariance, resume."""

import math
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from pgolf.data.coprime import CoprimeWindowSampler, SamplerStateError, coprime_stride
from pgolf.data.loader import DataLoaderError, DistributedTokenLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shard_helpers import position_shards  # noqa: E402

T = 8  # seq_len; windows are T + 1 tokens


def _make(tmp_path, sizes, prefix="fineweb_train_"):
    return position_shards(tmp_path, sizes, prefix)


def _loader(files, rank=0, world=1, seed=7, **kw):
    return DistributedTokenLoader(files, rank, world, "cpu", sampling="coprime", seed=seed, **kw)


def _all_windows(sizes):
    """Every (T+1)-token block of every shard, as the tuple of its global token ids."""
    out, base = set(), 0
    for n in sizes:
        for b in range(n // (T + 1)):
            out.add(tuple(range(base + b * (T + 1), base + (b + 1) * (T + 1))))
        base += n
    return out


def test_one_epoch_visits_every_window_exactly_once(tmp_path):
    sizes = [9 * 10 + 4, 9 * 7, 9 * 13 + 8]  # 30 windows; ragged tails are never read
    files = _make(tmp_path, sizes)
    ld = _loader(files)
    seen = []
    for _ in range(15):  # 15 batches of 2 windows = one epoch
        x, y = ld.next_batch(2 * T, T, 1)
        assert torch.equal(x[:, 1:], y[:, :-1])
        seen += [tuple(xr) + (yr[-1],) for xr, yr in zip(x.tolist(), y.tolist())]
    assert Counter(seen) == Counter(_all_windows(sizes))
    assert ld.state()["epoch"] == 1 and ld.state()["visited"] == [0, 0, 0]
    # The next epoch covers them all once more, in another order.
    again = []
    for _ in range(15):
        x, y = ld.next_batch(2 * T, T, 1)
        again += [tuple(xr) + (yr[-1],) for xr, yr in zip(x.tolist(), y.tolist())]
    assert Counter(again) == Counter(_all_windows(sizes)) and again != seen


def test_sampler_epoch_ends_exactly_with_uneven_shards():
    s = CoprimeWindowSampler([3 * 50, 3 * 1, 3 * 17 + 2, 2], 3, seed=3)  # last shard: no full window
    shards, starts = s.take(s.total)
    assert sorted(zip(shards.tolist(), starts.tolist())) == sorted(
        (i, 3 * b) for i, n in enumerate(s.blocks) for b in range(n))
    assert s.epoch == 1 and s.visited == [0, 0, 0, 0]


@pytest.mark.parametrize("n", [1, 2, 3, 12, 30, 97, 360])
def test_stride_is_coprime(n):
    for h in range(0, 2 ** 64, 2 ** 60 + 12345):
        c = coprime_stride(n, h)
        assert 1 <= c <= max(n - 1, 1) and math.gcd(c, n) == 1
    s = CoprimeWindowSampler([n * 5], 5, seed=1)
    for epoch in range(4):
        offsets, strides = s.plan(epoch)
        assert math.gcd(strides[0], n) == 1 and 0 <= offsets[0] < n


def _order(seed, epochs=1, sizes=(5 * 40, 5 * 25, 5 * 31)):
    s = CoprimeWindowSampler(list(sizes), 5, seed)
    return [tuple(a) for a in zip(*(x.tolist() for x in s.take(s.total * epochs)))]


def test_order_is_seeded_and_epochs_differ():
    assert _order(11) == _order(11)
    assert len({tuple(_order(seed)) for seed in range(5)}) == 5
    two = _order(11, epochs=2)
    half = len(two) // 2
    assert two[:half] == _order(11) and two[half:] != two[:half]
    assert sorted(two[half:]) == sorted(two[:half])
    s = CoprimeWindowSampler([5 * 40, 5 * 25, 5 * 31], 5, 11)
    assert s.plan(0) != s.plan(1)


def test_not_sequential_within_a_shard():
    s = CoprimeWindowSampler([4 * 100], 4, seed=5)
    starts = s.take(100)[1].tolist()
    assert sorted(starts) == list(range(0, 400, 4)) and starts != sorted(starts)


def test_batches_mix_shards(tmp_path):
    sizes = [9 * 40] * 4
    files = _make(tmp_path, sizes)
    ld = _loader(files)
    for _ in range(5):
        x, _ = ld.next_batch(16 * T, T, 1)
        shard_of_row = {int(r[0]) // sizes[0] for r in x}
        assert len(shard_of_row) >= 2, shard_of_row
    # Progress-weighted draws keep the shards level: none runs far ahead of the others.
    visited = ld.state()["visited"]
    assert sum(visited) == 80 and max(visited) - min(visited) < 20, visited


def _steps(files, world, accum, steps, G):
    loaders = [_loader(files, r, world) for r in range(world)]
    out = []
    for _ in range(steps):
        rows = []  # this step's rows in global order: micro-step major, then rank
        for _m in range(accum):
            for ld in loaders:
                rows += ld.next_batch(G, T, accum)[0].tolist()
        out.append(rows)
    return out


def test_world_size_invariance(tmp_path):
    files = _make(tmp_path, [9 * 23, 9 * 17 + 3, 9 * 30])
    G = 4 * T * 2  # 8 windows per optimizer step
    one = _steps(files, 1, 4, 6, G)
    two = _steps(files, 2, 2, 6, G)
    four = _steps(files, 4, 1, 6, G)
    assert one == two == four  # same windows, same order, so the same per-rank slices
    flat = [tuple(r) for step in one for r in step]
    assert len(set(flat)) == len(flat)  # 48 of the 70 windows: none repeated within the epoch


def test_rank_slices_are_contiguous_runs_of_the_global_draw(tmp_path):
    files = _make(tmp_path, [9 * 20, 9 * 20])
    g = _loader(files, 0, 1).next_batch(6 * T, T, 1)[0]
    parts = [_loader(files, r, 3).next_batch(6 * T, T, 1)[0] for r in range(3)]
    assert torch.equal(torch.cat(parts), g)


def test_state_round_trip_resumes_exactly(tmp_path):
    files = _make(tmp_path, [9 * 11, 9 * 6 + 5, 9 * 9])
    a = _loader(files, 1, 2)
    for _ in range(7):  # crosses the 26-window epoch boundary on the way
        a.next_batch(4 * T, T, 1)
    st = a.state()
    assert all(isinstance(v, (int, str, list)) for v in st.values())
    blob = torch.load(_save(tmp_path, st), weights_only=True)
    expect = [a.next_batch(4 * T, T, 1) for _ in range(12)]
    b = _loader(files, 1, 2)
    b.load_state(blob)
    for x, y in expect:
        gx, gy = b.next_batch(4 * T, T, 1)
        assert torch.equal(gx, x) and torch.equal(gy, y)


def _save(tmp_path, obj):
    p = tmp_path / "state.pt"
    torch.save(obj, p)
    return p


def test_fresh_state_round_trip(tmp_path):
    # run.prime saves the state before any batch and restores it after its warmup steps.
    files = _make(tmp_path, [9 * 12, 9 * 12])
    a = _loader(files)
    st = a.state()
    first = a.next_batch(4 * T, T, 1)[0]
    a.next_batch(4 * T, T, 1)
    a.load_state(st)
    assert torch.equal(a.next_batch(4 * T, T, 1)[0], first)


def test_mode_mismatched_state_is_refused(tmp_path):
    files = _make(tmp_path, [9 * 12, 9 * 12])
    seq = DistributedTokenLoader(files, 0, 1)
    cop = _loader(files)
    cop.next_batch(2 * T, T, 1)
    with pytest.raises(DataLoaderError, match="data.sampling='coprime'.*'sequential'") as e:
        seq.load_state(cop.state())
    assert "\n" not in str(e.value)
    with pytest.raises(DataLoaderError, match="data.sampling='sequential'.*'coprime'"):
        cop.load_state(seq.state())


def test_state_for_other_shards_or_seed_is_refused(tmp_path):
    files = _make(tmp_path, [9 * 12, 9 * 12])
    a = _loader(files)
    a.next_batch(2 * T, T, 1)
    with pytest.raises(SamplerStateError, match="run.seed 7"):
        _loader(files, seed=8).load_state(a.state())
    with pytest.raises(SamplerStateError, match="run.train_seq_len"):
        _loader(files[:1]).load_state(a.state())


def test_bad_token_and_bad_mode_are_refused(tmp_path):
    files = _make(tmp_path, [9 * 4, 9 * 4])  # ids 0..35 then 36..71
    with pytest.raises(DataLoaderError, match="000000.bin holds token id 35"):
        _loader(files, vocab_size=30)  # the first shard is checked in full at construction
    late = _loader(files, vocab_size=40)
    with pytest.raises(DataLoaderError, match=r"000001.bin holds token id (4\d|5\d|6\d|7[01]), outside"):
        late.next_batch(8 * T, T, 1)  # the whole epoch: shard 1's windows are in it
    assert _loader(files, vocab_size=72).next_batch(8 * T, T, 1)[0].max() == 70
    with pytest.raises(DataLoaderError, match="data.sampling 'random'"):
        DistributedTokenLoader(files, 0, 1, sampling="random")
    with pytest.raises(SamplerStateError, match="no shard holds a full window of 65"):
        _loader(files).next_batch(64, 64, 1)


@pytest.mark.slow
def test_a_tiny_run_trains_on_coprime_windows_and_checkpoints_them(embedded_corpus, tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _train_helpers import tiny
    from pgolf.run import train
    cfg = tiny(embedded_corpus, "data.sampling=coprime", "run.checkpoint_every=3", "run.iterations=6",
               "run.keep_checkpoints=true")
    train(cfg, str(tmp_path / "run"))
    blob = torch.load(tmp_path / "run" / "ckpt_rank0.pt", weights_only=True)
    st = blob["loader"]
    assert st["sampling"] == "coprime" and st["seed"] == cfg.run.seed and st["window"] == 65
    # Priming rewinds the loader, so the last checkpoint (step 6) has drawn 6 steps x 8 windows.
    total = sum(st["blocks"])
    assert st["epoch"] * total + sum(st["visited"]) == 6 * 8
