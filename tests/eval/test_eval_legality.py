"""The legality audit: batch SLOT fails causality; plain, sliding, TTT and causal SLOT pass."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import make_tokens  # noqa: E402

from pgolf.config_tree import EvalConfig  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import ScoreRecorder, eval_emit_event  # noqa: E402
from pgolf.eval.legality import audit, audit_eval_config, audit_positions  # noqa: E402
from pgolf.eval.runner import evaluate  # noqa: E402

N = 192


def _ecfg(**kw) -> EvalConfig:
    base = dict(seq_len=64, stride=16, batch_seqs=4, ttt_chunk_tokens=48, ttt_lr=0.05, ttt_epochs=1,
                ttt_batch_seqs=2, slot_lr=0.05, slot_steps=3, audit_tokens=N)
    base.update(kw)
    return EvalConfig(**base)


@pytest.mark.parametrize("mode,ok", [
    ("plain", True), ("sliding", True), ("ttt", True), ("causal-slot", True),
    ("ttt+causal-slot", True), ("slot", False), ("ttt+slot", False)])
def test_audit_verdicts_on_stand_in(tiny_model, tables, mode, ok):
    report = audit(tiny_model, make_tokens(400), mode, _ecfg(), tables)
    assert report.once == "PASS"
    assert report.causality == ("PASS" if ok else "FAIL"), report.summary()
    assert report.score_before_update == ("PASS" if "ttt" in mode else "n/a")
    assert report.normalized == ("PASS" if ok else "FAIL"), report.summary()
    assert report.ok is ok
    first = report.summary().splitlines()[0]
    assert first.startswith(f"audit mode={mode}") and f"causality={report.causality}" in first
    if not ok:
        assert "NON-CAUSAL" in first and "first changed position" in first


@pytest.mark.parametrize("mode,ok", [("ttt+causal-slot", True), ("slot", False)])
def test_audit_on_real_gpt(real_gpt, tables, mode, ok):
    report = audit(real_gpt, make_tokens(200), mode, _ecfg(audit_tokens=128), tables)
    assert report.ok is ok and report.once == "PASS", report.summary()


def test_audit_catches_double_scoring_and_training_before_scoring(tiny_model, tables):
    def leaky(tokens, cfg, rec, events):
        out = evaluate(tiny_model, tokens, tables, cfg, Comm(), torch.device("cpu"), None, rec, events)
        rec.add(5, torch.zeros(3))           # targets 5..7 scored twice
        eval_emit_event(events, "score", 0, 10)
        # Legal: evaluate above already scored every target, so this update follows its scores
        # (training before scoring is early_train's case below).
        eval_emit_event(events, "train", 40, 60)
        return out

    ecfg = _ecfg()
    ecfg.audit_tokens = 64
    report = audit(None, make_tokens(64), "ttt", ecfg, tables, eval_fn=leaky, vocab_size=32)
    assert report.once == "FAIL" and "position 6" in report.once_detail
    assert report.causality == "PASS" and report.score_before_update == "PASS"

    def early_train(tokens, cfg, rec, ev):
        eval_emit_event(ev, "train", 10, 20)
        return evaluate(tiny_model, tokens, tables, cfg, Comm(), torch.device("cpu"), None, rec, ev)

    report = audit(None, make_tokens(64), "ttt", ecfg, tables, eval_fn=early_train, vocab_size=32)
    assert report.score_before_update == "FAIL" and not report.ok


def test_audit_config_and_positions_cover_boundaries():
    cfg = audit_eval_config(_ecfg(seq_len=2048, stride=64, ttt_enabled=True, ttt_chunk_tokens=32768), 2048)
    assert (cfg.seq_len, cfg.stride, cfg.ttt_chunk_tokens) == (512, 64, 512)
    pos = audit_positions(2048, cfg)
    assert 1 in pos and 2048 in pos and 512 in pos and 513 in pos
    assert all(1 <= j <= 2048 for j in pos) and len(pos) == len(set(pos)) <= 12


def test_recorder_counts_from_evaluate(tiny_model, tables):
    rec = ScoreRecorder(N)
    evaluate(tiny_model, make_tokens(N), tables, _ecfg(ttt_enabled=True), Comm(), torch.device("cpu"),
             recorder=rec)
    assert (rec.count_array() == 1).all()


class _PeekingLM(torch.nn.Module):
    """Non-causal on purpose: each position also sees the embedding `ahead` tokens later."""

    def __init__(self, base, ahead):
        super().__init__()
        self.base = base
        self.num_layers, self.banked, self.ahead = base.num_layers, False, ahead

    def forward_hidden(self, ids):
        h = self.base.forward_hidden(ids)
        nxt = self.base.emb(torch.roll(ids, -self.ahead, dims=1))
        return h + 0.5 * nxt

    def compute_logits(self, h):
        return self.base.compute_logits(h)

    def token_nll(self, ids, targets):
        logits = self.compute_logits(self.forward_hidden(ids))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                                 reduction="none").view_as(targets)


@pytest.mark.parametrize("mode", ["plain", "sliding"])
def test_audit_fails_a_model_that_peeks_at_its_target(tiny_model, tables, mode):
    # Only target j reads token j, so the perturbation test cannot see it; normalization does.
    report = audit(_PeekingLM(tiny_model, 1), make_tokens(N), mode, _ecfg(), tables, vocab_size=32)
    assert report.causality == "PASS" and report.normalized == "FAIL" and not report.ok
    assert "normalized=FAIL (j=" in report.summary()


def test_audit_fails_a_model_that_peeks_two_ahead(tiny_model, tables):
    report = audit(_PeekingLM(tiny_model, 2), make_tokens(N), "sliding", _ecfg(), tables, vocab_size=32)
    assert report.causality == "FAIL" and not report.ok
