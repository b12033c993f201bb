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
from pgolf.eval.runner import EvalMode, evaluate  # noqa: E402

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
    cfg = EvalMode.parse(mode).eval_config(_ecfg())
    assert EvalMode.of(cfg).name == name
    logs: list[str] = []
    out = evaluate(tiny_model, make_tokens(100), tables, cfg, Comm(), CPU, logs.append)
    assert out["mode"] == name and out["causal"] is causal and out["tokens"] == 100
    assert out["eval_seconds"] > 0 and 0 < out["val_bpb"] < 20
    done = [line for line in logs if line.startswith("eval:done")]
    assert len(done) == 1 and ("NON-CAUSAL" in done[0]) is (not causal)


def test_mode_mapping_keeps_other_fields_and_defaults_the_stride():
    src = _ecfg(stride=0, ttt_lr=0.123)
    cfg = EvalMode.parse("ttt+causal-slot").eval_config(src)
    assert (cfg.stride, cfg.ttt_enabled, cfg.slot_mode, cfg.ttt_lr) == (16, True, "causal", 0.123)
    assert src.ttt_enabled is False and src.slot_mode == "off"
    assert EvalMode.parse("plain").eval_config(_ecfg(stride=8, ttt_enabled=True)).stride == 0
    assert EvalMode.parse("sliding").eval_config(_ecfg(stride=8)).stride == 8
    assert EvalMode.parse("sliding+slot").eval_config(src).slot_mode == "batch"
    assert set(EvalMode.names()) >= {"plain", "sliding", "ttt", "slot", "causal-slot", "ttt+slot",
                               "ttt+causal-slot", "lora-ttt", "phased-ttt"}
    with pytest.raises(EvalInputError, match="unknown eval mode"):
        EvalMode.parse("fast").eval_config(src)


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


# ---------------------------------------------------------------- EvalMode: the typed mode

_VARIANTS = ("", "-carry", "-bias", "-carry-bias")
# Every name a user may type -> the name evaluate() logs for it (eval:mode, eval:done, metrics "mode").
MODE_NAMES = {
    "plain": "plain", "sliding": "sliding", "ttt": "ttt", "lora-ttt": "lora-ttt", "phased-ttt": "phased-ttt",
    "slot": "sliding+slot", "sliding+slot": "sliding+slot", "plain+slot": "sliding+slot", "ttt+slot": "ttt+slot",
    **{p + "causal-slot" + v: "sliding+causal-slot" + v for p in ("", "sliding+", "plain+") for v in _VARIANTS},
    **{"ttt+causal-slot" + v: "ttt+causal-slot" + v for v in _VARIANTS},
}


def test_the_accepted_names_are_exactly_the_known_ones():
    assert set(EvalMode.names(prefixed=True)) == set(MODE_NAMES)
    assert set(EvalMode.names()) == {n for n in MODE_NAMES if not n.startswith(("sliding+", "plain+"))}


@pytest.mark.parametrize("name", sorted(MODE_NAMES))
@pytest.mark.parametrize("stride", [0, 8])
def test_every_name_round_trips(name, stride):
    mode = EvalMode.parse(name)
    assert mode.name == MODE_NAMES[name]
    assert EvalMode.parse(mode.name) == mode  # the canonical name is a fixed point
    ecfg = mode.eval_config(_ecfg(stride=stride))
    assert EvalMode.of(ecfg) == mode
    assert EvalMode.of(ecfg).name == mode.name and mode.causal is (mode.slot != "batch")


@pytest.mark.parametrize("name, want", [
    # name -> (stride, ttt_enabled, ttt_kind, slot_mode, slot_carry, slot_bias), from eval.stride 0, seq_len 16
    ("plain", (0, False, "global", "off", False, False)), ("sliding", (16, False, "global", "off", False, False)),
    ("ttt", (16, True, "global", "off", False, False)), ("lora-ttt", (0, True, "lora", "off", False, False)),
    ("phased-ttt", (0, True, "phased", "off", False, False)), ("slot", (16, False, "global", "batch", False, False)),
    ("plain+causal-slot-bias", (16, False, "global", "causal", False, True)),
    ("ttt+causal-slot-carry", (16, True, "global", "causal", True, False)),
])
def test_eval_config_of_a_name(name, want):
    e = EvalMode.parse(name).eval_config(_ecfg())
    assert (e.stride, e.ttt_enabled, e.ttt_kind, e.slot_mode, e.slot_carry, e.slot_bias) == want


def test_a_mode_off_slot_keeps_the_configs_slot_fields():
    e = EvalMode.parse("sliding").eval_config(_ecfg(slot_carry=True, slot_bias=True))
    assert e.slot_carry and e.slot_bias and e.slot_mode == "off"


@pytest.mark.parametrize("name", ["fast", "", "ttt+", "+slot", "lora-ttt+slot", "phased-ttt+causal-slot",
                                  "slot+ttt", "causal-slot-bias-carry", "ttt+ttt", "sliding+plain", "TTT"])
def test_an_unknown_name_is_one_line_listing_the_names(name):
    with pytest.raises(EvalInputError) as e:
        EvalMode.parse(name)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"unknown eval mode {name!r}; use one of ")
    assert msg.endswith(", ".join(EvalMode.names()))


def test_of_names_what_the_config_runs():
    # Batch SLOT on non-overlapping windows is what evaluate() runs for stride 0.
    assert EvalMode.of(_ecfg(slot_mode="batch")).name == "plain+slot"
    assert EvalMode.of(_ecfg(ttt_enabled=True, ttt_kind="phased", stride=8)).name == "phased-ttt"
    # SLOT fields of a config without causal SLOT are not part of its mode.
    assert EvalMode.of(_ecfg(slot_carry=True, stride=4)) == EvalMode.parse("sliding")
    with pytest.raises(EvalInputError, match="does not combine with eval.ttt_kind=lora"):
        EvalMode.of(_ecfg(ttt_enabled=True, ttt_kind="lora", slot_mode="causal"))


def test_audit_and_bench_eval_refuse_an_unknown_mode_before_loading_anything(capsys, monkeypatch, tmp_path):
    from pgolf.bench_eval import bench_eval
    from pgolf.cli import main
    from pgolf.config_tree import Config
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGOLF_TRACEBACK", raising=False)
    assert main(["audit", "no-such-run", "--mode", "fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown eval mode 'fast'; use one of plain, " in err, err
    with pytest.raises(EvalInputError, match="unknown eval mode 'fast'"):
        bench_eval(Config(), "no-such-run/model.ptz", ["plain", "fast"])
