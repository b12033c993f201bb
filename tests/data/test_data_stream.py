"""data.packing=stream: #1855's micro-batches, one flat row cut into attention segments at every
BOS and every max_len tokens of a document; the model keeps the segments apart."""

import numpy as np
import pytest
import torch

from pgolf.config import finalize_config
from pgolf.config_checks import config_problems
from pgolf.config_tree import Config
from pgolf.data.loader import DataLoaderError, DistributedTokenLoader
from pgolf.data.shards import write_shard
from pgolf.model.attention import doc_layout, segment_starts
from pgolf.model.gpt import GPT

BOS, V, L = 1, 64, 16


def doc_shards(tmp_path, sizes, seed=0, lead=3) -> list[np.ndarray]:
    """Shards of documents (BOS + 1..3L tokens, so some are longer than L), each shard opening
    with `lead` tokens of a document cut off before it."""
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(sizes):
        toks = list(rng.integers(2, V, lead))
        while len(toks) < n:
            toks += [BOS] + list(rng.integers(2, V, int(rng.integers(1, 3 * L))))
        arr = np.array(toks[:n])
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", arr)
        out.append(arr)
    return out


def loader(tmp_path, rank=0, world=1):
    return DistributedTokenLoader(str(tmp_path / "fineweb_train_*.bin"), rank, world, "cpu", packing="stream",
                                  bos_id=BOS)


def expected_starts(row: list[int], max_len: int) -> list[int]:
    """Segment starts worked out token by token: a BOS, the row's start, or max_len tokens on
    from the last of those two."""
    starts, doc = [], 0
    for i, t in enumerate(row):
        if i == 0 or t == BOS:
            doc = i
        if (i - doc) % max_len == 0:
            starts.append(i)
    return starts


def test_stream_batches_follow_the_shard_and_segments_follow_documents(tmp_path):
    shards = doc_shards(tmp_path, [1000, 700])
    ld = loader(tmp_path)
    n = 96  # local tokens: 192 global / accum 2
    first_bos = int(np.flatnonzero(shards[0] == BOS)[0])
    pos, shard = first_bos, 0
    for _ in range(12):
        x, y = ld.next_batch(192, L, 2)
        assert x.shape == y.shape == (1, n)
        if pos + n + 1 > len(shards[shard]):  # the tail is skipped: next shard, from its first BOS
            shard = (shard + 1) % 2
            pos = int(np.flatnonzero(shards[shard] == BOS)[0])
        src = shards[shard][pos:pos + n + 1]
        assert x[0].tolist() == src[:-1].tolist() and y[0].tolist() == src[1:].tolist()
        pos += n + 1
        row = x[0].tolist()
        starts = segment_starts(x, BOS, L)[0].nonzero().flatten().tolist()
        assert starts == expected_starts(row, L)
        assert {i for i, t in enumerate(row) if t == BOS} <= set(starts)
        assert max(b - a for a, b in zip(starts, starts[1:] + [n])) <= L
    assert shard == 1 or ld.state()["epoch"] == 1  # the run above crossed a shard end


def test_cu_seqlens_cover_every_token_once_in_buckets_of_64(tmp_path):
    doc_shards(tmp_path, [3000])
    x, _ = loader(tmp_path).next_batch(2048, L, 1)
    lay = doc_layout(x, BOS, "varlen", L)
    cu = lay.cu_seqlens.tolist()
    assert len(cu) % 64 == 0 and cu[0] == 0 and cu[-1] == x.numel() and cu == sorted(cu)
    real = sorted(set(cu))
    assert real[:-1] == expected_starts(x[0].tolist(), L) and lay.max_seqlen == L


def test_stream_world_sizes_see_identical_batches(tmp_path):
    doc_shards(tmp_path, [900, 800, 500])
    one = loader(tmp_path)
    ref = [one.next_batch(256, L, 8) for _ in range(64)]  # 2112 tokens: past every shard end
    assert one.state()["epoch"] == 1  # every shard end was met
    for world in (2, 4):
        lds = [loader(tmp_path, r, world) for r in range(world)]
        per_rank = [[ld.next_batch(256, L, 8 // world) for _ in range(64 // world)] for ld in lds]
        # Micro-step m of rank r at world W reads what micro-batch m*W + r of world 1 reads,
        # shard tails included: a step's span is skipped to the next shard as a whole.
        seq = [per_rank[r][m] for m in range(64 // world) for r in range(world)]
        for (x, y), (rx, ry) in zip(seq, ref, strict=True):
            assert torch.equal(x, rx) and torch.equal(y, ry)


def test_stream_resume_continues_where_it_stopped(tmp_path):
    doc_shards(tmp_path, [700, 600])
    a = loader(tmp_path)
    for _ in range(5):
        a.next_batch(128, L, 1)
    st = a.state()
    expect = [a.next_batch(128, L, 1) for _ in range(6)]
    b = loader(tmp_path)
    b.load_state(st)
    for (x, y), (ex, ey) in zip([b.next_batch(128, L, 1) for _ in range(6)], expect):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    a = loader(tmp_path)  # saved inside a step of 4 micro-batches
    a.next_batch(128, L, 4)
    st = a.state()
    expect = [a.next_batch(128, L, 4) for _ in range(7)]
    b = loader(tmp_path)
    b.load_state(st)
    assert all(torch.equal(x, ex) for (x, _), (ex, _) in zip([b.next_batch(128, L, 4) for _ in range(7)], expect))
    rows = DistributedTokenLoader(str(tmp_path / "fineweb_train_*.bin"), 0, 1, "cpu")
    with pytest.raises(DataLoaderError, match="data.packing='stream'"):
        rows.load_state(st)


def test_stream_needs_a_bos_and_the_doc_mask(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.full(100, 5))
    with pytest.raises(DataLoaderError, match="no BOS"):
        loader(tmp_path)
    cfg = Config()
    cfg.data.packing = "stream"
    assert any("model.doc_mask" in p for p in config_problems(cfg))


def test_model_on_a_stream_row_equals_each_segment_alone(tmp_path):
    doc_shards(tmp_path, [2000], seed=3)
    x, _ = loader(tmp_path).next_batch(256, L, 1)
    cfg = Config()
    m = cfg.model
    m.arch, m.vocab_size, m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = "record", V, 2, 32, 4, 2
    m.bigram_vocab_size, m.ve_enabled, m.rope_train_len, m.rope_dims, m.smear = 0, False, 0, 4, False
    m.doc_mask, m.doc_max_len, m.bos_id = True, L, BOS
    finalize_config(cfg)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    starts = expected_starts(x[0].tolist(), L)
    assert any(x[0, s] != BOS for s in starts[1:])  # the row holds a cut inside a document
    with torch.no_grad():
        full = model.forward_logits(x)
        for a, b in zip(starts, starts[1:] + [x.size(1)]):
            assert torch.allclose(full[:, a:b], model.forward_logits(x[:, a:b]), atol=2e-5), (a, b)
