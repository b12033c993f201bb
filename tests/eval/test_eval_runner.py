"""evaluate(): mode selection, names, max_tokens, budget warnings; audit mode mapping."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import make_tokens  # noqa: E402

from pgolf.config_tree import EvalConfig  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import EvalInputError  # noqa: E402
from pgolf.eval.runner import EVAL_MODES, eval_mode_name, evaluate, mode_to_eval_config  # noqa: E402

CPU = torch.device("cpu")


def _ecfg(**kw) -> EvalConfig:
    base = dict(seq_len=16, batch_tokens=64, batch_seqs=4, ttt_chunk_tokens=32, ttt_batch_seqs=2,
                ttt_epochs=1, slot_steps=2)
    base.update(kw)
    return EvalConfig(**base)


@pytest.mark.parametrize("mode,name,causal", [
    ("plain", "plain", True), ("sliding", "sliding", True), ("ttt", "ttt", True),
    ("slot", "sliding+slot", False), ("causal-slot", "sliding+causal-slot", True),
    ("ttt+slot", "ttt+slot", False), ("ttt+causal-slot", "ttt+causal-slot", True)])
def test_each_mode_runs_with_its_name(tiny_model, tables, mode, name, causal):
    cfg = mode_to_eval_config(mode, _ecfg())
    assert eval_mode_name(cfg) == name
    logs: list[str] = []
    out = evaluate(tiny_model, make_tokens(100), tables, cfg, Comm(), CPU, logs.append)
    assert out["mode"] == name and out["causal"] is causal and out["tokens"] == 100
    assert out["eval_seconds"] > 0 and 0 < out["val_bpb"] < 20
    done = [line for line in logs if line.startswith("eval:done")]
    assert len(done) == 1 and ("NON-CAUSAL" in done[0]) is (not causal)


def test_mode_mapping_keeps_other_fields_and_defaults_the_stride():
    src = _ecfg(stride=0, ttt_lr=0.123)
    cfg = mode_to_eval_config("ttt+causal-slot", src)
    assert (cfg.stride, cfg.ttt_enabled, cfg.slot_mode, cfg.ttt_lr) == (16, True, "causal", 0.123)
    assert src.ttt_enabled is False and src.slot_mode == "off"
    assert mode_to_eval_config("plain", _ecfg(stride=8, ttt_enabled=True)).stride == 0
    assert mode_to_eval_config("sliding", _ecfg(stride=8)).stride == 8
    assert mode_to_eval_config("sliding+slot", src).slot_mode == "batch"
    assert set(EVAL_MODES) >= {"plain", "sliding", "ttt", "slot", "causal-slot", "ttt+slot",
                               "ttt+causal-slot", "lora-ttt", "phased-ttt"}
    with pytest.raises(EvalInputError, match="unknown eval mode"):
        mode_to_eval_config("fast", src)


def test_max_tokens_truncates_targets(tiny_model, tables):
    out = evaluate(tiny_model, make_tokens(100), tables, _ecfg(stride=4, max_tokens=40), Comm(), CPU)
    ref = evaluate(tiny_model, make_tokens(100)[:41], tables, _ecfg(stride=4), Comm(), CPU)
    assert out["tokens"] == 40 and out["val_bpb"] == ref["val_bpb"]


def test_budget_overrun_is_warned(tiny_model, tables):
    logs: list[str] = []
    evaluate(tiny_model, make_tokens(200), tables, _ecfg(stride=2, batch_seqs=1, budget_seconds=1e-9),
             Comm(), CPU, logs.append)
    assert sum("eval:warning" in line and "budget_seconds" in line for line in logs) >= 1


def test_unfinalized_seq_len_is_rejected(tiny_model, tables):
    with pytest.raises(EvalInputError, match="finalize_config"):
        evaluate(tiny_model, make_tokens(20), tables, EvalConfig(), Comm(), CPU)
