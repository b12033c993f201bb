"""The training clock: what the wall-clock cap counts, how often the loop syncs, NaN reporting."""

import sys
import types
from pathlib import Path

import pytest
import torch

from pgolf.dist import Comm
from pgolf.errors import TrainingError
from pgolf.run import train
from pgolf.runlog import parse_event
from pgolf.train import LossWatch, RunState
from pgolf.wallclock import CapSchedule, TrainClock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import tiny  # noqa: E402


def simulate(cap_ms: float, step_ms: float, slack_ms: float = 500.0) -> tuple[int, float, int]:
    """Run CapSchedule against a fake clock; returns (steps, elapsed at stop, checks made)."""
    sched = CapSchedule(cap_ms, Comm(), torch.device("cpu"), slack_ms)
    step, checks = 0, 0
    while True:
        if sched.due(step):
            checks += 1
            if sched.check(step, step * step_ms, step, step * step_ms):
                return step, step * step_ms, checks
        step += 1


@pytest.mark.parametrize("step_ms", [0.3, 7.0, 83.4, 420.0, 2500.0])
def test_cap_checks_are_rare_and_overshoot_is_under_the_slack(step_ms):
    cap = 600_000.0
    steps, elapsed, checks = simulate(cap, step_ms)
    assert elapsed >= cap
    # Stops within one step of the cap (the check lands where the cap is predicted) and
    # never more than the slack late.
    assert elapsed - cap < max(step_ms, 1e-9) + 1e-6 and elapsed - cap <= max(500.0, step_ms)
    if step_ms < 100:
        assert checks < steps / 4  # at 83 ms/step a sync every ~6 steps, not every step


def test_clock_pauses_for_validation_only(monkeypatch):
    now = [5.0]
    monkeypatch.setattr("pgolf.wallclock.time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    clock = TrainClock(torch.device("cpu"), offset_ms=1000.0)
    clock.start()
    now[0] += 0.05
    with clock.paused():
        now[0] += 0.2
    now[0] += 0.05
    assert clock.elapsed_ms() == pytest.approx(1100.0)  # offset + 100 ms of work, not the 200 ms pause
    assert clock.host_ms() == pytest.approx(1100.0)


def test_loss_watch_reports_the_first_bad_step_when_read_later(tmp_path):
    watch, st = LossWatch(torch.device("cpu"), float("nan")), RunState()
    for step, loss in enumerate([3.0, 2.5, float("inf"), float("nan"), 2.0], start=1):
        watch.update(torch.tensor(loss), step)
    with pytest.raises(TrainingError, match=r"inf at step 3 \(last finite loss 2.5000\)"):
        watch.check(st, str(tmp_path))


def test_loop_reads_the_device_only_at_log_lines(embedded_corpus, tmp_path, monkeypatch):
    checks = []
    real = LossWatch.check
    monkeypatch.setattr(LossWatch, "check", lambda self, st, out: checks.append(st.step) or real(self, st, out))
    cfg = tiny(embedded_corpus, "run.iterations=24", "run.train_log_every=8", "model.arch=baseline")
    metrics = train(cfg, str(tmp_path / "run"))
    assert metrics["steps"] == 24 and metrics["stop_reason"] == "iterations"
    # Steps 1-5 (the first lines), then every 8th, then the end: not once per step.
    assert checks == [1, 2, 3, 4, 5, 8, 16, 24, 24]


def test_cap_counts_ema_and_logging_time(embedded_corpus, tmp_path, monkeypatch):
    """Time spent outside train_step (EMA updates, log lines) is training time.

    The training clock reads a fake time that moves only inside EMA.update (1/8 s a call) and
    log_step (1/16 s a call): the counted time must be exactly theirs, and the EMA time alone
    must bring the 1.5 s cap within 40 steps."""
    import pgolf.train as train_mod
    from pgolf.optim.averaging import EMA
    now, calls = [0.0], {"ema": 0, "log": 0}
    monkeypatch.setattr("pgolf.wallclock.time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def ticking(kind, fn, seconds):
        def call(*a, **k):
            now[0] += seconds
            calls[kind] += 1
            return fn(*a, **k)
        return call

    monkeypatch.setattr(EMA, "update", ticking("ema", EMA.update, 0.125))
    monkeypatch.setattr(train_mod, "log_step", ticking("log", train_mod.log_step, 0.0625))
    cfg = tiny(embedded_corpus, "run.iterations=40", "run.max_wallclock_seconds=1.5", "run.train_log_every=4",
               "schedule.ema_enabled=true", "schedule.export_weights=ema", "model.arch=baseline")
    metrics = train(cfg, str(tmp_path / "run"))
    assert metrics["stop_reason"] == "wallclock_cap" and metrics["steps"] < 40
    assert calls["ema"] == metrics["steps"] and calls["log"] > 0
    assert metrics["train_time_s"] == pytest.approx(0.125 * calls["ema"] + 0.0625 * calls["log"], abs=1e-3)
    assert metrics["train_time_s"] >= 1.5
    lines = [parse_event(ln) for ln in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    done = [ev for ev in lines if ev.get("event") == "train_done"]
    assert done and done[0]["reason"] == "wallclock_cap"


@pytest.mark.parametrize("step_ms,write_ms", [(100.0, 50.0), (100.0, 5000.0), (2000.0, 300.0)])
def test_auto_checkpoints_cost_under_two_percent_and_come_at_least_every_minute_or_so(step_ms, write_ms):
    from pgolf.wallclock import AutoCheckpoints
    auto = AutoCheckpoints(Comm(), torch.device("cpu"), start_ms=0.0)
    elapsed, writes, checks, last = 0.0, [], 0, 0.0
    for step in range(1, 20_000):
        elapsed += step_ms
        if auto.due(step):
            checks += 1
            if auto.check(step, elapsed, step_ms):
                writes.append(elapsed - last)
                elapsed += write_ms
                last = elapsed
                auto.written(step, elapsed, write_ms, step_ms)
    total = elapsed
    assert writes and len(writes) * write_ms / total <= 0.02 + 1e-9
    # Spaced by the larger of a minute and 50 writes, give or take one step.
    assert all(gap >= max(60_000, 50 * write_ms) - step_ms - write_ms for gap in writes[1:])
    assert all(gap <= max(60_000, 50 * write_ms) + 2 * step_ms for gap in writes[1:])
    assert checks <= 3 * len(writes) + 3  # a collective per decision, not per step
