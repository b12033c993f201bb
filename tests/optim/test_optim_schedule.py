"""Momentum warm-up and lr warmdown on hand-checked steps."""

import pytest

from pgolf.optim.errors import OptimError
from pgolf.optim.schedule import lr_multiplier, muon_momentum_at


def test_muon_momentum_ramp():
    assert muon_momentum_at(0, 0.92, 0.99, 1500) == pytest.approx(0.92)
    assert muon_momentum_at(750, 0.92, 0.99, 1500) == pytest.approx(0.955)
    assert muon_momentum_at(300, 0.85, 0.95, 500) == pytest.approx(0.91)
    assert muon_momentum_at(1500, 0.92, 0.99, 1500) == pytest.approx(0.99)
    assert muon_momentum_at(9000, 0.92, 0.99, 1500) == pytest.approx(0.99)
    assert muon_momentum_at(0, 0.92, 0.99, 0) == 0.99


@pytest.mark.parametrize("step,expected", [(0, 1.0), (79, 1.0), (80, 1.0), (81, 0.95), (90, 0.5),
                                           (95, 0.25), (100, 0.0), (130, 0.0)])
def test_iters_warmdown(step, expected):
    # iterations 100, warmdown 20: flat until step 80, then (100 - step) / 20.
    got = lr_multiplier(step, elapsed_ms=123.0, iterations=100, warmdown_iters=20,
                        max_wallclock_ms=0.0, mode="iters")
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("cap_ms,expected", [
    (16_000.0, 1.0),   # 6000 ms left >= 5000 ms warmdown
    (15_000.0, 1.0),   # exactly the warmdown length left: not yet inside it
    (14_000.0, 0.8),   # 4000 / 5000
    (12_000.0, 0.4),   # 2000 / 5000
    (10_000.0, 0.0),   # budget spent
    (9_000.0, 0.0),    # overrun clamps at 0
])
def test_time_warmdown(cap_ms, expected):
    # 100 steps in 10 s -> 100 ms/step; warmdown 50 steps -> 5000 ms.
    got = lr_multiplier(100, elapsed_ms=10_000.0, iterations=10**6, warmdown_iters=50,
                        max_wallclock_ms=cap_ms, mode="time")
    assert got == pytest.approx(expected)


def test_time_warmdown_uses_running_average_and_step_zero():
    # Slower steps so far (200 ms) make the warmdown window longer: 50 * 200 = 10 s.
    assert lr_multiplier(50, 10_000.0, 10**6, 50, 14_000.0, "time") == pytest.approx(0.4)
    assert lr_multiplier(0, 0.0, 100, 50, 600_000.0, "time") == 1.0
    assert lr_multiplier(0, 5_000.0, 100, 50, 1_000.0, "time") == 1.0
    assert lr_multiplier(10, 9_000.0, 100, 0, 10_000.0, "time") == 1.0  # no warmdown


@pytest.mark.parametrize("step,elapsed,iters,cap,expected", [
    # The run's rule: with a cap, whichever budget ends first drives the warmdown.
    (60, 6_000.0, 100, 600_000.0, 0.8),     # iterations end long before the cap: iters (0.8 < 1.0)
    (50, 10_000.0, 10**6, 14_000.0, 0.4),   # the cap ends first: time (0.4 < 1.0)
    (90, 10_000.0, 100, 11_000.0, 0.18),    # both in warmdown: the lower, time (1000 / 5556 < 0.2)
    (90, 10_000.0, 100, 0.0, 0.2),          # no cap: iters only
])
def test_auto_mode_takes_whichever_budget_ends_first(step, elapsed, iters, cap, expected):
    got = lr_multiplier(step, elapsed, iters, 50, cap, "auto")
    assert got == pytest.approx(expected)
    parts = [lr_multiplier(step, elapsed, iters, 50, cap, "iters")]
    if cap > 0:
        parts.append(lr_multiplier(step, elapsed, iters, 50, cap, "time"))
    assert got == pytest.approx(min(parts))


def test_bad_modes_raise():
    with pytest.raises(OptimError, match="warmdown_mode"):
        lr_multiplier(1, 1.0, 10, 5, 0.0, "cosine")
    with pytest.raises(OptimError, match="max_wallclock_ms"):
        lr_multiplier(1, 1.0, 10, 5, 0.0, "time")


@pytest.mark.parametrize("floor", [0.0, 0.1, 0.5])
def test_min_lr_floor_lifts_the_whole_warmdown(floor):
    for step in (0, 60, 90, 100):
        plain = lr_multiplier(step, 0.0, 100, 50, 0.0, "iters")
        assert lr_multiplier(step, 0.0, 100, 50, 0.0, "iters", floor) == pytest.approx(floor + (1 - floor) * plain)
    assert lr_multiplier(100, 0.0, 100, 50, 0.0, "iters", floor) == pytest.approx(floor)  # ends at the floor
    assert lr_multiplier(0, 0.0, 100, 50, 0.0, "iters", floor) == 1.0
