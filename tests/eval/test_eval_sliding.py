"""Sliding windows: exact coverage for awkward lengths, equality with plain at stride = window."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import make_tokens  # noqa: E402

from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import EvalInputError, ScoreRecorder, eval_plain  # noqa: E402
from pgolf.eval.sliding import eval_sliding, plan_windows  # noqa: E402

CPU = torch.device("cpu")


@pytest.mark.parametrize("n,seq_len,stride", [
    (100, 16, 4), (101, 16, 4), (103, 16, 5), (16, 16, 4), (17, 16, 4), (7, 16, 4),
    (1, 8, 8), (64, 16, 16), (70, 16, 16), (2049, 64, 64), (33, 8, 3)])
def test_plan_scores_every_target_exactly_once(n, seq_len, stride):
    windows = plan_windows(n, seq_len, stride)
    count = np.zeros(n, dtype=int)
    for start, lo, hi in windows:
        width = min(seq_len, n - start)
        assert 0 <= start <= lo < hi <= start + width <= n
        # Every window except a short-stream one is full length (no short context).
        assert width == min(seq_len, n)
        count[lo:hi] += 1
    assert (count == 1).all()
    # Only the first window scores more than `stride`; in order, left to right.
    assert all(hi - lo <= stride for _, lo, hi in windows[1:])
    assert [w[1] for w in windows] == sorted(w[1] for w in windows)
    assert windows[0][:2] == (0, 0)


def test_plan_tail_is_aligned_not_rescored():
    windows = plan_windows(100, 16, 8)
    assert windows[-1] == (84, 96, 100)
    assert len(windows) == 1 + 11


def test_plan_rejects_bad_stride():
    with pytest.raises(EvalInputError, match="stride"):
        plan_windows(10, 8, 9)
    with pytest.raises(EvalInputError, match="stride"):
        plan_windows(10, 8, 0)


def test_sliding_equals_plain_when_stride_is_window(tiny_model, tables):
    tokens = make_tokens(16 * 9)
    rec_p, rec_s = ScoreRecorder(144), ScoreRecorder(144)
    p = eval_plain(tiny_model, tokens, 16, 16 * 4, tables, Comm(), CPU, recorder=rec_p)
    s = eval_sliding(tiny_model, tokens, 16, 16, 4, tables, Comm(), CPU, recorder=rec_s)
    assert (p["tokens"], p["bytes"]) == (s["tokens"], s["bytes"]) == (144, p["bytes"])
    assert s["val_loss"] == p["val_loss"] and s["val_bpb"] == p["val_bpb"]
    np.testing.assert_array_equal(rec_p.nll_array(), rec_s.nll_array())


def test_sliding_uses_longer_context_than_plain(tiny_model, tables):
    tokens = make_tokens(101)
    rec = ScoreRecorder(101)
    logs: list[str] = []
    out = eval_sliding(tiny_model, tokens, 16, 4, 3, tables, Comm(), CPU, log=logs.append, recorder=rec)
    assert out["tokens"] == 101 and (rec.count_array() == 1).all()
    # Target 50 is scored by the window that ends at 52, i.e. with the 14 tokens before it.
    with torch.no_grad():
        ref = tiny_model.token_nll(tokens[36:52][None], tokens[37:53][None])[0, 14].item()
    assert rec.nll_array()[50] == pytest.approx(ref, rel=1e-6)
    assert any(line.startswith("eval:sliding windows:") and "running_bpb:" in line and "eta:" in line
               for line in logs)
    plain = eval_plain(tiny_model, tokens, 16, 64, tables, Comm(), CPU)
    assert out["val_loss"] != pytest.approx(plain["val_loss"], abs=1e-6)
