"""Trackers get exactly the log's scalars; a missing package fails at config time, a failing
tracker never stops the run."""

import importlib.util

import pytest

from pgolf.config import ConfigError, resolve_config
from pgolf.runlog import RunLog, format_event
from pgolf.trackers import ScalarRouter, TrackerError, check_trackers, open_trackers

LINES = [
    format_event({"step": "1/4", "train_loss": 6.9, "lr_mult": 1.0, "momentum": 0.85, "step_ms": 50.0}),
    format_event({"step": 2, "val_loss": 6.4, "val_bpb": 3.9}),
    format_event({"event": "quant_round_trip", "pre_quant_val_bpb": 3.8, "post_quant_val_bpb": 3.85}),
    "eval:ttt chunks:2/4 tokens:256 running_bpb:4.341671 eta:0.2s",
    format_event({"event": "config", "section": "model", "num_layers": 2}),
]


def test_sinks_receive_every_line_as_the_log_writes_it(tmp_path):
    got = []
    log = RunLog(str(tmp_path / "log.txt"), echo=False, sinks=[got.append])
    for line in LINES:
        log.line(line)
    log.close()
    assert [" ".join(f"{k}:{v}" for k, v in ev.items()) for ev in got] == LINES
    assert RunLog(None, enabled=False, sinks=[got.append]).sinks == []  # other ranks feed nothing


def test_router_tags_and_steps():
    r = ScalarRouter()
    out = [s for line in LINES for s in r.scalars(dict(p.split(":", 1) for p in line.split()))]
    assert out == [("train/train_loss", 6.9, 1), ("train/lr_mult", 1.0, 1), ("train/momentum", 0.85, 1),
                   ("train/step_ms", 50.0, 1), ("val/val_loss", 6.4, 2), ("val/val_bpb", 3.9, 2),
                   ("quant_round_trip/pre_quant_val_bpb", 3.8, 2), ("quant_round_trip/post_quant_val_bpb", 3.85, 2),
                   ("eval_ttt/running_bpb", 4.341671, 2)]


def test_a_failing_sink_is_dropped_with_a_warning_and_the_log_goes_on(tmp_path):
    class Broken:
        name = "broken"
        closed = False

        def __call__(self, ev):
            raise OSError("disk full")

        def close(self):
            Broken.closed = True

    got = []
    log = RunLog(str(tmp_path / "log.txt"), echo=False, sinks=[Broken(), got.append])
    log.line(LINES[0])
    log.line(LINES[1])
    log.close()
    text = (tmp_path / "log.txt").read_text().splitlines()
    assert text == [LINES[0], "event:warning message:tracker_broken_dropped:_disk_full", LINES[1]]
    assert len(got) == 3 and not Broken.closed  # dropped sinks are not closed again


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="run.trackers: unknown tracker 'tensorbord'"):
        resolve_config("smoke", None, {}, ["run.trackers=tensorbord"])
    assert resolve_config("smoke", None, {}, ["run.trackers=tensorboard, wandb"])[0].run.trackers


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(TrackerError, match=r"wandb is not installed; pip install wandb"):
        check_trackers("wandb")
    assert check_trackers("") == []


def test_tensorboard_gets_the_logged_values(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = RunLog(str(tmp_path / "log.txt"), echo=False, sinks=open_trackers("tensorboard", tmp_path))
    for line in LINES:
        log.line(line)
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("val/val_bpb")] == [(2, 3.9)]
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("train/train_loss")] == [(1, 6.9)]
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("config/")]
