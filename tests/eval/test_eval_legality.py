"""The legality audit: batch SLOT fails causality; plain, sliding, TTT and causal SLOT pass."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import make_tokens  # noqa: E402

from pgolf.config import EvalConfig  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import ScoreRecorder, emit_event  # noqa: E402
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
        emit_event(events, "score", 0, 10)
        emit_event(events, "train", 40, 60)  # nothing past 10 was scored before this point
        return out

    ecfg = _ecfg()
    ecfg.audit_tokens = 64
    events: list = []
    report = audit(None, make_tokens(64), "ttt", ecfg, tables, eval_fn=lambda t, c, r, e: leaky(t, c, r, events), vocab_size=32)
    assert report.once == "FAIL" and "position 6" in report.once_detail
    assert report.causality == "PASS" and report.score_before_update == "PASS"

    def early_train(tokens, cfg, rec, ev):
        emit_event(ev, "train", 10, 20)
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
