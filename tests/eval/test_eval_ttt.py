"""Score-first TTT: scoring precedes training, the last chunk is never trained, no mutation."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import TinyCausalLM, make_tables, make_tokens  # noqa: E402

from pgolf.config_tree import EvalConfig  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import ScoreRecorder  # noqa: E402
from pgolf.eval.sliding import eval_sliding, plan_windows  # noqa: E402
from pgolf.eval.slot import SlotScorer  # noqa: E402
from pgolf.eval.ttt import (_train_chunk, eval_ttt, ttt_chunk_bounds, ttt_chunk_windows,  # noqa: E402
                            ttt_train_sequences)

CPU = torch.device("cpu")
N = 200


def _cfg(**kw) -> EvalConfig:
    base = dict(seq_len=16, stride=8, batch_seqs=4, ttt_chunk_tokens=48, ttt_lr=0.05,
                ttt_epochs=2, ttt_batch_seqs=2, ttt_momentum=0.9, ttt_grad_clip=1.0)
    base.update(kw)
    return EvalConfig(**base)


def _ttt(model, cfg, scorer=None):
    rec, events = ScoreRecorder(N), []
    out = eval_ttt(model, make_tokens(N), cfg, make_tables(), Comm(), CPU, scorer=scorer,
                   recorder=rec, events=events)
    return out, rec.nll_array(), rec.count_array(), events


def test_chunk_windows_split_at_boundaries():
    chunks = ttt_chunk_bounds(100, 30)
    assert chunks == [(0, 30), (30, 60), (60, 90), (90, 100)]
    per = ttt_chunk_windows(plan_windows(100, 16, 7), chunks)
    for (clo, chi), ws in zip(chunks, per):
        assert ws and all(clo <= lo < hi <= chi for _, lo, hi in ws)
    count = np.zeros(100, int)
    for ws in per:
        for _, lo, hi in ws:
            count[lo:hi] += 1
    assert (count == 1).all()


def test_every_trained_token_was_scored_before_and_last_chunk_untrained(tiny_model):
    out, _, count, events = _ttt(tiny_model, _cfg())
    assert (count == 1).all() and out["tokens"] == N and out["chunks"] == 5
    scored = np.zeros(N, bool)
    trained = []
    for kind, lo, hi in events:
        if kind == "score":
            assert not scored[lo:hi].any()
            scored[lo:hi] = True
        else:
            assert scored[max(lo - 1, 0):hi].all(), (lo, hi)
            trained.append((lo, hi))
    # 4 trained chunks x 3 sequences of 16 x 2 epochs; nothing from the last chunk [192, 200).
    assert len(trained) == 4 * 3 * 2
    assert max(hi for _, hi in trained) <= 192
    # The first training event comes after all of chunk 0 was scored, not before.
    first_train = next(i for i, e in enumerate(events) if e[0] == "train")
    assert all(e[2] <= 48 for e in events[:first_train]) and events[first_train - 1][2] == 48


def test_ttt_does_not_mutate_caller_model(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    _ttt(tiny_model, _cfg())
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in tiny_model.parameters())


def test_ttt_first_chunk_equals_sliding_and_training_helps(tiny_model):
    rec = ScoreRecorder(N)
    sl = eval_sliding(tiny_model, make_tokens(N), 16, 8, 4, make_tables(), Comm(), CPU, recorder=rec)
    out, nll, _, _ = _ttt(tiny_model, _cfg())
    np.testing.assert_allclose(nll[:48], rec.nll_array()[:48], rtol=0, atol=1e-6)
    assert np.abs(nll[48:] - rec.nll_array()[48:]).max() > 1e-3
    assert out["val_loss"] < sl["val_loss"]


def test_ttt_with_zero_lr_equals_sliding(tiny_model):
    rec = ScoreRecorder(N)
    eval_sliding(tiny_model, make_tokens(N), 16, 8, 4, make_tables(), Comm(), CPU, recorder=rec)
    _, nll, _, _ = _ttt(tiny_model, _cfg(ttt_lr=0.0))
    np.testing.assert_allclose(nll, rec.nll_array(), rtol=0, atol=1e-6)


def test_frozen_blocks_stay_fixed_while_the_rest_trains():
    model = TinyCausalLM()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    seqs = ttt_train_sequences(0, 48, 16)
    assert seqs == [(0, 16), (16, 16), (32, 16)]
    _train_chunk(model, opt, params, make_tokens(N), seqs, _cfg(ttt_freeze_blocks=1), Comm(), CPU, None)
    after = model.state_dict()
    assert torch.equal(after["blocks.0.weight"], before["blocks.0.weight"])
    assert torch.equal(after["blocks.0.bias"], before["blocks.0.bias"])
    assert not torch.equal(after["blocks.1.weight"], before["blocks.1.weight"])
    assert not torch.equal(after["emb.weight"], before["emb.weight"])


def test_ttt_with_causal_slot_runs_and_counts_once(tiny_model):
    out, _, count, _ = _ttt(tiny_model, _cfg(), scorer=SlotScorer("causal", lr=0.05, steps=2))
    assert (count == 1).all() and np.isfinite(out["val_bpb"])


def test_ttt_on_real_gpt_after_an_inference_mode_eval(real_gpt):
    # A prior eval leaves inference-mode tensors in the model's caches (RoPE tables); TTT
    # must still train its copy, and must leave the caller's weights alone.
    # TTT's own inference-mode scoring must not poison its copy's caches either.
    before = {k: v.clone() for k, v in real_gpt.state_dict().items()}
    fresh, _, _, _ = _ttt(real_gpt, _cfg(ttt_epochs=1))
    sl = eval_sliding(real_gpt, make_tokens(N), 16, 8, 4, make_tables(), Comm(), CPU)
    out, nll, count, _ = _ttt(real_gpt, _cfg(ttt_epochs=1))
    assert (count == 1).all() and out["val_loss"] != sl["val_loss"]
    assert out["val_loss"] == pytest.approx(fresh["val_loss"], abs=1e-6)
    for k, v in real_gpt.state_dict().items():
        assert torch.equal(v, before[k]), k
