"""Phased TTT: global SGD pauses only on the scored prefix, K past the end changes nothing."""

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import make_documents, make_tables  # noqa: E402

from pgolf.config_tree import EvalConfig  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import ScoreRecorder  # noqa: E402
from pgolf.eval.legality import audit  # noqa: E402
from pgolf.eval.lora_ttt import eval_lora_ttt, split_documents  # noqa: E402
from pgolf.eval.phased_ttt import eval_phased_ttt, phase_boundaries  # noqa: E402
from pgolf.eval.runner import evaluate  # noqa: E402

CPU = torch.device("cpu")
N = 240
BOS = 1
DOC_STARTS = [0, 40, 75, 120, 170, 200]


def _tokens() -> torch.Tensor:
    return make_documents(N, DOC_STARTS, BOS)


def _cfg(**kw) -> EvalConfig:
    base = dict(seq_len=32, ttt_enabled=True, ttt_kind="phased", ttt_lora_rank=4, ttt_lora_lr=0.01,
                ttt_lora_chunk=8, ttt_phased_prefix_docs=4, ttt_phased_phases=2, ttt_lr=0.05,
                ttt_momentum=0.9, ttt_epochs=1, ttt_chunk_tokens=32, ttt_batch_seqs=2)
    base.update(kw)
    return EvalConfig(**base)


def _run(fn, model, cfg):
    rec, events = ScoreRecorder(N), []
    out = fn(model, _tokens(), cfg, make_tables(), Comm(), CPU, recorder=rec, events=events)
    return out, rec.nll_array(), rec.count_array(), events


def test_phase_boundaries_follow_the_records_split():
    assert phase_boundaries(2500, 3, 50000) == [833, 1666, 2500]
    assert phase_boundaries(4, 2, 6) == [2, 4]
    assert phase_boundaries(10, 3, 6) == [2, 4]  # none at the very end: nothing left to score
    assert phase_boundaries(1, 3, 6) == [1]
    assert phase_boundaries(0, 3, 6) == []


def test_k_past_the_documents_equals_lora_ttt_and_plain(real_gpt):
    big = _cfg(ttt_phased_prefix_docs=100, ttt_phased_phases=1)
    out_p, nll_p, _, ev_p = _run(eval_phased_ttt, real_gpt, big)
    out_l, nll_l, _, ev_l = _run(eval_lora_ttt, real_gpt, big)
    assert out_p["phases"] == 0 and np.array_equal(nll_p, nll_l) and ev_p == ev_l
    # Without adapters the same run is the plain per-document evaluation.
    _, nll_plain, _, ev_plain = _run(eval_phased_ttt, real_gpt, _cfg(ttt_phased_prefix_docs=100,
                                                                     ttt_phased_phases=1, ttt_lora_rank=0))
    _, nll_ref, _, _ = _run(eval_lora_ttt, real_gpt, _cfg(ttt_lora_rank=0))
    assert np.array_equal(nll_plain, nll_ref) and all(k == "score" for k, _, _ in ev_plain)


def test_global_phases_train_only_on_the_scored_prefix(real_gpt):
    out, nll, count, events = _run(eval_phased_ttt, real_gpt, _cfg())
    assert (count == 1).all() and out["phases"] == 2 and out["boundaries"] == [2, 4]
    scored = np.zeros(N, bool)
    for kind, lo, hi in events:
        if kind == "score":
            assert not scored[lo:hi].any()
            scored[lo:hi] = True
        else:
            assert scored[max(lo - 1, 0):hi].all(), (kind, lo, hi)
    # The global steps are what phased adds to LoRA TTT's events (their ranges do not depend
    # on the weights): seq_len sequences inside each phase's prefix, after it was scored.
    _, nll_l, _, ev_l = _run(eval_lora_ttt, real_gpt, _cfg())
    extra = list((Counter(events) - Counter(ev_l)).elements())
    assert extra and all(k == "train" and hi - lo == 32 and hi <= DOC_STARTS[4] for k, lo, hi in extra)
    assert any(hi > DOC_STARTS[2] for _, _, hi in extra)
    # Phase 1 changed the base model: documents after it score differently than LoRA TTT alone.
    assert np.array_equal(nll[:DOC_STARTS[2]], nll_l[:DOC_STARTS[2]])
    assert not np.allclose(nll[DOC_STARTS[2]:], nll_l[DOC_STARTS[2]:])


def test_phased_ttt_leaves_the_caller_model_alone(real_gpt):
    before = {k: v.clone() for k, v in real_gpt.state_dict().items()}
    _run(eval_phased_ttt, real_gpt, _cfg())
    assert real_gpt.weight_transform is None
    assert all(torch.equal(v, before[k]) for k, v in real_gpt.state_dict().items())
    assert all(p.grad is None for p in real_gpt.parameters())


def test_evaluate_names_the_phased_mode(real_gpt):
    out = evaluate(real_gpt, _tokens(), make_tables(), _cfg(), Comm(), CPU)
    assert out["mode"] == "phased-ttt" and out["tokens"] == N and out["phases"] == 2
    assert out["docs"] == len(split_documents(_tokens(), BOS))


@pytest.mark.slow
def test_audit_passes_for_phased_ttt(real_gpt):
    report = audit(real_gpt, _tokens(), "phased-ttt", _cfg(audit_tokens=N, ttt_phased_prefix_docs=3),
                   make_tables())
    assert report.ok, report.summary()
    assert report.score_before_update == "PASS" and report.normalized == "PASS"
