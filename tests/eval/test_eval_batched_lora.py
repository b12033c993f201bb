"""#1855's batched LoRA / phased TTT (eval.ttt_lora_method = record)."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import build_real_gpt, make_documents, make_tables  # noqa: E402

import pgolf.eval.batched_lora as bl  # noqa: E402
from pgolf.config_tree import EvalConfig  # noqa: E402
from pgolf.data.sidecar import SidecarBytes  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import BpbAccumulator, ScoreRecorder, as_byte_tables  # noqa: E402
from pgolf.model.attention import segment_starts  # noqa: E402
from pgolf.eval.runner import evaluate  # noqa: E402

CPU = torch.device("cpu")
BOS = 1
N = 240
# Lengths 40, 35, 45, 50, 30, 40 (+ the next BOS): sorting by length differs from stream order.
DOC_STARTS = [0, 40, 75, 120, 170, 200]


def _cfg(**kw) -> EvalConfig:
    base = dict(seq_len=32, ttt_enabled=True, ttt_kind="lora", ttt_lora_method="record", ttt_lora_rank=4,
                ttt_lora_alpha=8.0, ttt_lora_lr=0.02, ttt_lora_chunk=8, ttt_lora_batch=2,
                ttt_phased_prefix_docs=4, ttt_phased_phases=2, ttt_lr=0.05, ttt_epochs=1, ttt_chunk_tokens=32,
                ttt_batch_seqs=2)
    base.update(kw)
    return EvalConfig(**base)


def _tokens() -> torch.Tensor:
    return make_documents(N, DOC_STARTS, BOS)


def _adapters(model, bsz: int, cfg: EvalConfig, seed: int = 0) -> bl.SideAdapters:
    return bl.SideAdapters(model, bsz, cfg, torch.Generator().manual_seed(seed), CPU)


def _score(model, tokens, docs, cfg, lora=None):
    """Per-target NLL of score_batch over one batch of (start, length) documents."""
    work = model
    for p in work.parameters():
        p.requires_grad_(False)
    lora = lora or _adapters(work, len(docs), cfg)
    rec = ScoreRecorder(tokens.numel() - 1)
    acc = BpbAccumulator()
    bl.score_batch(work, lora, lora.optimizer(cfg, CPU), tokens, docs, cfg, as_byte_tables(make_tables(), CPU),
                   acc, CPU, rec)
    return rec.nll_array(), rec.count_array(), acc


def test_documents_run_through_the_next_bos():
    t = torch.tensor([7, 1, 5, 6, 1, 7, 8, 9, 1, 4])
    assert bl.record_documents(t, 1) == [(1, 4), (4, 5), (8, 2)]


def test_batches_sort_by_length_and_run_longest_first():
    docs = [(0, 10), (10, 50), (60, 20), (80, 40), (120, 30), (150, 60)]
    got = bl.record_batches(docs, 2)
    assert [i for i, _ in got] == [2, 1, 0]
    assert got[0][1] == [(10, 50), (150, 60)]


def test_chunk_window_keeps_the_last_chunk_short_and_the_window_bounded():
    assert bl.chunk_window(0, 20, 3, 8, 16) == (0, 8, 0, 8)
    assert bl.chunk_window(2, 20, 3, 8, 16) == (4, 16, 12, 4)


def test_batched_equals_one_document_at_a_time():
    model, tokens, cfg = build_real_gpt(), _tokens(), _cfg()
    docs = bl.record_documents(tokens, BOS)[:3]
    batch = _adapters(model, 3, cfg)
    with torch.no_grad():  # the same A in every row: the rows then differ only by their document
        for pairs in batch.pairs.values():
            for a, _ in pairs:
                a.copy_(a[:1].clone().expand_as(a))
    a0 = [a.detach()[:1].clone() for pairs in batch.pairs.values() for a, _ in pairs]
    nll_b, cnt_b, _ = _score(model, tokens, docs, cfg, batch)
    for d in docs:
        one = _adapters(model, 1, cfg)
        with torch.no_grad():
            for a1, a in zip((a for v in one.pairs.values() for a, _ in v), a0):
                a1.copy_(a)
        nll_1, cnt_1, _ = _score(model, tokens, [d], cfg, one)
        lo, hi = d[0], d[0] + d[1] - 1
        assert np.array_equal(cnt_1[lo:hi], np.ones(hi - lo))
        np.testing.assert_allclose(nll_b[lo:hi], nll_1[lo:hi], rtol=1e-5, atol=1e-6)
    # With no learning the scores are the plain model's on each document alone.
    nll_0, _, _ = _score(model, tokens, docs, _cfg(ttt_lora_lr=0.0, ttt_lora_wd=0.0, seq_len=64))
    for s, n in docs:
        with torch.no_grad():
            ref = model.token_nll(tokens[None, s:s + n - 1], tokens[None, s + 1:s + n])[0].numpy()
        np.testing.assert_allclose(nll_0[s:s + n - 1], ref, rtol=1e-5, atol=1e-6)


def test_adapter_output_scales_with_alpha_over_rank():
    model = build_real_gpt()
    x = torch.randn(2, 5, model.cfg.model_dim)
    plain = _adapters(model, 2, _cfg(ttt_lora_alpha=0.0))
    scaled = _adapters(model, 2, _cfg(ttt_lora_alpha=8.0))  # rank 4: x2
    with torch.no_grad():
        for lora in (plain, scaled):
            torch.manual_seed(1)
            for a, b in (p for v in lora.pairs.values() for p in v):
                b.normal_()
    torch.testing.assert_close(scaled("q", 0, x), 2.0 * plain("q", 0, x))


def test_head_adapter_adds_to_the_logits_before_the_cap():
    model = build_real_gpt()
    lora = _adapters(model, 2, _cfg())
    with torch.no_grad():
        lora.pairs["head"][0][1].normal_()
    ids = torch.randint(3, 32, (2, 6))
    with torch.no_grad():
        h = model.forward_hidden(ids)
        raw = h @ model.tok_emb.weight.T + lora("head", 0, h)
        cap = model.cfg.logit_softcap
        model.side_paths = lora
        got = model.forward_logits(ids)
        model.side_paths = None
    torch.testing.assert_close(got, cap * torch.tanh(raw / cap))
    assert not torch.allclose(got, model.forward_logits(ids))


def test_head_adapter_trains_and_moves_the_scores():
    model, tokens, cfg = build_real_gpt(), _tokens(), _cfg()
    docs = bl.record_documents(tokens, BOS)[:2]
    lora = _adapters(model, 2, cfg)
    for point, pairs in lora.pairs.items():  # freeze every adapter but the head's
        for a, b in pairs:
            a.requires_grad_(point == "head")
            b.requires_grad_(point == "head")
    trained, _, _ = _score(model, tokens, docs, cfg, lora)
    assert float(lora.pairs["head"][0][1].detach().abs().max()) > 1e-3  # B left zero
    frozen, _, _ = _score(model, tokens, docs, _cfg(ttt_lora_lr=0.0, ttt_lora_wd=0.0))
    s, n = docs[0]
    k = cfg.ttt_lora_chunk
    assert np.array_equal(trained[s:s + k], frozen[s:s + k])  # the first chunk: B = 0 still
    assert np.abs(trained[s + k:s + n - 1] - frozen[s + k:s + n - 1]).max() > 1e-3


def _looped_gpt():
    from pgolf.config import finalize_config
    from pgolf.config_tree import Config
    from pgolf.model.gpt import GPT
    cfg = Config()
    m = cfg.model
    m.arch, m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = "record", 3, 32, 2, 1
    m.vocab_size, m.bigram_vocab_size, m.ve_layers, m.rope_train_len = 32, 0, "-1", 0
    m.num_loops, m.loop_start, m.loop_end, m.parallel_start = 1, 1, 1, 2
    finalize_config(cfg)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_each_schedule_slot_has_its_own_adapters():
    model = _looped_gpt()  # schedule [0, 1, 1, 2]: block 1 runs twice
    lora = _adapters(model, 1, _cfg())
    assert all(len(lora.pairs[p]) == 4 for p in ("q", "k", "v", "o", "mlp"))
    seen = []
    model.side_paths = lambda point, slot, x: seen.append((point, slot))
    with torch.no_grad():
        model.forward_logits(torch.randint(3, 32, (1, 5)))
    assert [s for p, s in seen if p == "q"] == [0, 1, 2, 3]
    assert sorted({p for p, _ in seen}) == ["head", "k", "mlp", "o", "q", "v"]
    ids = torch.randint(3, 32, (1, 5))
    outs = []
    for slot in (1, 2):  # the two passes of block 1
        with torch.no_grad():
            for pairs in lora.pairs.values():
                for _, b in pairs:
                    b.zero_()
            lora.pairs["mlp"][slot][1].normal_()
            model.side_paths = lora
            outs.append(model.forward_logits(ids))
    model.side_paths = None
    assert not torch.allclose(outs[0], outs[1])


def test_reset_keeps_a_and_zeroes_b():
    model = build_real_gpt()
    warm, cold = _adapters(model, 2, _cfg()), _adapters(model, 2, _cfg(ttt_lora_warm_a=False))
    for lora in (warm, cold):
        with torch.no_grad():
            for pairs in lora.pairs.values():
                for a, b in pairs:
                    a.add_(1.0)
                    b.normal_()
        before = [a.clone() for pairs in lora.pairs.values() for a, _ in pairs]
        lora.reset()
        after = [a for pairs in lora.pairs.values() for a, _ in pairs]
        assert all(float(b.detach().abs().sum()) == 0 for pairs in lora.pairs.values() for _, b in pairs)
        same = all(torch.equal(x, y) for x, y in zip(before, after))
        assert same == (lora is warm)


def _adapter_states(monkeypatch, cfg):
    """(A and B at the start, A at the end) of every batch an evaluation scores."""
    states = []
    real = bl.score_batch

    def spy(work, lora, *a, **k):
        start = [(x.detach().clone(), y.detach().clone()) for v in lora.pairs.values() for x, y in v]
        out = real(work, lora, *a, **k)
        states.append((start, [x.detach().clone() for v in lora.pairs.values() for x, _ in v]))
        return out

    monkeypatch.setattr(bl, "score_batch", spy)
    evaluate(build_real_gpt(), _tokens(), make_tables(), cfg, Comm(), CPU)
    return states


def test_a_carries_across_batches_and_b_restarts(monkeypatch):
    states = _adapter_states(monkeypatch, _cfg())
    assert len(states) == 3
    for (_, end), (start, _) in zip(states, states[1:]):
        assert all(torch.equal(a0, a1) for a1, (a0, _) in zip(end, start))
        assert all(float(b.abs().sum()) == 0 for _, b in start)
    for start, end in states:  # A learns within a batch
        assert not all(torch.equal(a, a_end) for (a, _), a_end in zip(start, end))
    cold = _adapter_states(monkeypatch, _cfg(ttt_lora_warm_a=False))
    (_, end), (start, _) = cold[0], cold[1]
    assert not any(torch.equal(a0, a1) for a1, (a0, _) in zip(end, start))


def test_a_fresh_set_after_each_global_phase(monkeypatch):
    states = _adapter_states(monkeypatch, _cfg(ttt_kind="phased", ttt_phased_prefix_docs=2, ttt_phased_phases=1))
    (_, end0), (start1, _), (_, end1), (start2, _) = states[0], states[1], states[1], states[2]
    assert not any(torch.equal(a0, a1) for a1, (a0, _) in zip(end0, start1))  # phase after batch 1: new draw
    assert all(torch.equal(a0, a1) for a1, (a0, _) in zip(end1, start2))  # no phase after batch 2: carried


def test_phases_count_documents_in_processing_order(monkeypatch):
    model, tokens = build_real_gpt(), _tokens()
    docs = bl.record_documents(tokens, BOS)
    seen = []
    real = bl.record_global_sgd

    def spy(work, prefix, *a, **k):
        seen.append(prefix.clone())
        return real(work, prefix, *a, **k)

    monkeypatch.setattr(bl, "record_global_sgd", spy)
    out = evaluate(model, tokens, make_tables(), _cfg(ttt_kind="phased"), Comm(), CPU)
    assert out["phases"] == 2 and out["boundaries"] == [2, 4]
    batches = bl.record_batches(docs, 2)
    first, second = batches[0][1], batches[0][1] + batches[1][1]
    # Each phase trains on the documents processed so far (sorted-batch order), not the stream's first.
    order = lambda ds: sorted(ds, key=lambda d: (d[1], d[0]))  # noqa: E731
    assert torch.equal(seen[0], torch.cat([tokens[s:s + n] for s, n in order(first)]))
    assert torch.equal(seen[1], torch.cat([tokens[s:s + n] for s, n in order(second)]))
    assert not torch.equal(seen[0], torch.cat([tokens[s:s + n] for s, n in docs[:2]]))


def test_sidecar_bytes_are_charged_per_position():
    model, tokens = build_real_gpt(), _tokens()
    tables = as_byte_tables(make_tables(), CPU)
    per_pos = torch.zeros(N + 1, dtype=torch.int64)
    per_pos[1:] = tables.token_bytes(tokens[:-1], tokens[1:])
    side = SidecarBytes(per_pos, 32)
    a = evaluate(model, tokens, make_tables(), _cfg(ttt_kind="phased"), Comm(), CPU)
    b = evaluate(model, tokens, side, _cfg(ttt_kind="phased"), Comm(), CPU)
    assert a["bytes"] == b["bytes"] == side.total() and a["val_bpb"] == b["val_bpb"]
    doubled = evaluate(model, tokens, SidecarBytes(per_pos * 2, 32), _cfg(), Comm(), CPU)
    assert doubled["bytes"] == 2 * a["bytes"]


def test_a_chunk_is_scored_before_training_on_it():
    model, tokens, cfg = build_real_gpt(), _tokens(), _cfg()
    docs = bl.record_documents(tokens, BOS)[:2]
    base, _, _ = _score(model, tokens, docs, cfg)
    s = docs[0][0]
    t = s + 2 * cfg.ttt_lora_chunk - 1  # the last target of the document's second chunk
    changed = tokens.clone()
    changed[t + 1] = 3 + (int(changed[t + 1]) - 2) % 29
    got, _, _ = _score(model, changed, docs, cfg)
    np.testing.assert_array_equal(got[:t], base[:t])  # its chunk's earlier targets: no training on it yet
    assert got[t] != base[t]
    assert not np.array_equal(got[t + 1:s + docs[0][1] - 1], base[t + 1:s + docs[0][1] - 1])
    o = docs[1][0]  # the other document of the batch never sees it
    np.testing.assert_array_equal(got[o:o + docs[1][1] - 1], base[o:o + docs[1][1] - 1])


def test_segment_starts_split_documents_and_long_ones():
    x = torch.tensor([5, 5, 1, 5, 5, 5, 5, 5, 1, 5])
    got = segment_starts(x[None], 1, 3)[0].tolist()
    assert [i for i, v in enumerate(got) if v] == [0, 2, 5, 8]


def test_record_1855_selects_the_record_method():
    from pgolf.config import resolve_config
    cfg, _ = resolve_config("record_1855", env={})
    e = cfg.eval
    assert (e.ttt_lora_method, e.ttt_lora_alpha, e.ttt_lora_warm_a, e.ttt_lora_batch) == ("record", 144.0, True, 64)
    assert dataclasses.replace(e).ttt_lora_chunk == 48


@pytest.mark.parametrize("kind", ["lora", "phased"])
def test_runner_logs_the_method_and_the_legality_note(kind):
    lines = []
    evaluate(build_real_gpt(), _tokens(), make_tables(), _cfg(ttt_kind=kind), Comm(), CPU, log=lines.append)
    head = [ln for ln in lines if ln.startswith("eval:record-ttt ")][0]
    assert ("NOT CAUSAL" in head) == (kind == "phased")


@pytest.mark.multiproc
def test_two_ranks_score_every_target_once_and_agree(tmp_path):
    import torch.multiprocessing as mp

    from _eval_helpers import record_ttt_dist_worker
    kw = {f.name: getattr(_cfg(ttt_kind="phased"), f.name) for f in dataclasses.fields(EvalConfig)}
    mp.spawn(record_ttt_dist_worker, args=(2, str(tmp_path / "store"), str(tmp_path), kw, N, DOC_STARTS),
             nprocs=2, join=True)
    got = [torch.load(tmp_path / f"record_ttt_rank{r}.pt") for r in (0, 1)]
    one = evaluate(build_real_gpt(), _tokens(), make_tables(), _cfg(ttt_kind="phased"), Comm(), CPU)
    assert got[0]["out"]["val_bpb"] == got[1]["out"]["val_bpb"]
    assert got[0]["out"]["tokens"] == one["tokens"] == N and got[0]["out"]["bytes"] == one["bytes"]
    assert got[0]["out"]["phases"] == 2
    np.testing.assert_array_equal(got[0]["count"].numpy(), np.ones(N))
