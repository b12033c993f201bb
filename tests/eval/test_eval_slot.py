"""SLOT scorers: batch SLOT fits one delta on everything; causal SLOT one per window on context."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import make_tokens  # noqa: E402

from pgolf.config_tree import EvalConfig  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import EvalInputError, ScoreRecorder  # noqa: E402
from pgolf.eval.sliding import eval_sliding  # noqa: E402
from pgolf.eval.slot import SlotScorer, make_slot_scorer  # noqa: E402

CPU = torch.device("cpu")


def _run(model, tables, scorer, batch_seqs, n=120, log=None):
    rec = ScoreRecorder(n)
    out = eval_sliding(model, make_tokens(n), 16, 8, batch_seqs, tables, Comm(), CPU,
                       log=log, scorer=scorer, recorder=rec)
    return out, rec.nll_array()


def test_causal_slot_batched_equals_window_by_window(tiny_model, tables):
    scorer = SlotScorer("causal", lr=0.05, steps=4)
    _, one = _run(tiny_model, tables, scorer, batch_seqs=1)
    _, many = _run(tiny_model, tables, scorer, batch_seqs=5)
    np.testing.assert_allclose(one, many, rtol=0, atol=1e-5)


def test_causal_slot_first_window_is_unchanged_and_others_move(tiny_model, tables):
    _, plain = _run(tiny_model, tables, None, batch_seqs=4)
    _, causal = _run(tiny_model, tables, SlotScorer("causal", lr=0.05, steps=4), batch_seqs=4)
    np.testing.assert_allclose(causal[:16], plain[:16], atol=1e-5)
    assert np.abs(causal[16:] - plain[16:]).max() > 1e-3


def test_batch_slot_lowers_loss_and_is_labelled_non_causal(tiny_model, tables):
    logs: list[str] = []
    plain, _ = _run(tiny_model, tables, None, batch_seqs=4)
    slot, _ = _run(tiny_model, tables, SlotScorer("batch", lr=0.05, steps=5), batch_seqs=4, log=logs.append)
    assert slot["val_loss"] < plain["val_loss"] - 1e-3
    assert logs and all("NON-CAUSAL" in line for line in logs)


def test_slot_leaves_model_grads_untouched(tiny_model, tables):
    _run(tiny_model, tables, SlotScorer("batch", lr=0.05, steps=2), batch_seqs=4, n=40)
    assert all(p.grad is None for p in tiny_model.parameters())


def test_make_slot_scorer_from_config():
    assert make_slot_scorer(EvalConfig()) is None
    s = make_slot_scorer(EvalConfig(slot_mode="causal", slot_lr=0.1, slot_steps=7))
    assert (s.mode, s.lr, s.steps, s.causal, s.label) == ("causal", 0.1, 7, True, "causal-slot")
    with pytest.raises(EvalInputError, match="slot_mode"):
        make_slot_scorer(EvalConfig(slot_mode="bogus"))
