"""What a finished run tells its user: whether it made its planned steps, which eval each
number comes from (and no eval run twice for one number), and no leftover checkpoints."""

import json
import sys
from pathlib import Path

from pgolf.config import resolve_config
from pgolf.run import stopped_note, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import tiny  # noqa: E402


def test_the_default_run_is_bounded_by_steps_not_by_the_clock():
    cfg, _ = resolve_config("smoke", None, {}, [])
    assert cfg.run.max_wallclock_seconds == 0 and cfg.run.iterations == 300
    assert resolve_config("record_1128", None, {}, [])[0].run.max_wallclock_seconds == 600  # the rule stays


def test_a_run_that_stops_early_says_so(embedded_corpus, tmp_path):
    out = tmp_path / "run"
    # A cap far below one step's time: the cap check after the first steps ends training.
    metrics = train(tiny(embedded_corpus, "run.max_wallclock_seconds=0.0001", "eval.audit=false"), str(out))
    assert metrics["stop_reason"] == "wallclock_cap" and metrics["stopped_early"] is True
    assert metrics["steps"] < metrics["steps_planned"] == 6
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["stopped_early"] is True and saved["steps_planned"] == 6
    assert stopped_note(metrics) == f" stopped_early:{metrics['steps']}/6(wallclock_cap)"
    log = (out / "log.txt").read_text()
    assert f"training_stopped_at_step_{metrics['steps']}_of_6_(wallclock_cap)" in log
    assert "stopped_early:True" in log


def test_a_run_that_makes_its_steps_keeps_quiet_and_removes_its_checkpoints(embedded_corpus, tmp_path):
    out = tmp_path / "run"
    metrics = train(tiny(embedded_corpus, "run.checkpoint_every=2", "eval.audit=false"), str(out))
    assert metrics["stopped_early"] is False and stopped_note(metrics) == ""
    assert not list(out.glob("ckpt_rank*")), sorted(p.name for p in out.iterdir())
    kept = tmp_path / "kept"
    train(tiny(embedded_corpus, "run.checkpoint_every=2", "run.keep_checkpoints=true", "eval.audit=false"), str(kept))
    assert (kept / "ckpt_rank0.pt").is_file()


def test_a_plain_final_eval_reuses_the_post_quant_eval(embedded_corpus, tmp_path):
    out = tmp_path / "run"
    metrics = train(tiny(embedded_corpus, "eval.audit=false"), str(out))
    assert metrics["eval_mode"] == "plain" and metrics["val_bpb"] == metrics["post_quant_plain_val_bpb"]
    lines = (out / "log.txt").read_text().splitlines()
    assert sum("not run again" in s for s in lines) == 1
    assert sum(s.startswith("eval:done") for s in lines) == 0
    assert any(s.startswith("eval:plain") and s.endswith("phase:pre_quant") for s in lines)
    assert any(s.startswith("eval:plain") and s.endswith("phase:post_quant") for s in lines)


def test_another_final_mode_runs_and_is_labelled(embedded_corpus, tmp_path):
    out = tmp_path / "run"
    metrics = train(tiny(embedded_corpus, "eval.stride=32", "eval.audit=false"), str(out))
    assert metrics["eval_mode"] == "sliding"
    lines = (out / "log.txt").read_text().splitlines()
    assert not any("not run again" in s for s in lines)
    assert any(s.startswith("eval:done mode:sliding") and s.endswith("phase:final") for s in lines)


def test_info_labels_a_non_causal_eval_mode(capsys):
    from pgolf.cli import main
    assert main(["info", "--preset", "record_1128", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["eval_mode"] == "ttt+slot" and info["eval_causal"] is False
    assert main(["info", "--preset", "record_1128"]) == 0
    assert "eval mode: ttt+slot (NON-CAUSAL" in capsys.readouterr().out
    assert main(["info", "--preset", "smoke"]) == 0
    assert "eval mode: plain (causal)" in capsys.readouterr().out
