"""Record #1855's lr schedule and loop switch: warmdown over the last 85% of the capped wall clock,
floored with max(.., 0.1), the loop on from 35% of it; checked on its own run's step profile."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _optim_helpers import FakeModel  # noqa: E402

from pgolf.config import resolve_config  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.optim.builder import build_optimizers  # noqa: E402
from pgolf.optim.schedule import floored, frac_warmdown, lr_multiplier  # noqa: E402
from pgolf.train import RunState, set_looping, set_schedule  # noqa: E402
from pgolf.wallclock import training_cap_ms  # noqa: E402

# (steps taken, seconds of training) from #1855's train_seed42.log: step * 786432 tokens / its
# logged tok/s, and the final "stopping_early ... train_time: 599592ms step: 4945".
RECORD_PROFILE = [(500, 47.849), (1000, 95.963), (1500, 144.122), (2000, 192.570), (2500, 255.152),
                  (3000, 325.621), (3500, 396.083), (4000, 466.590), (4500, 537.043), (4945, 599.592)]
CAP_S = 599.5  # MAX_WALLCLOCK_SECONDS 600 less GPTQ_RESERVE_SECONDS 0.5 (the log: effective=599500ms)


def record_formula(t_s: float) -> float:
    frac = t_s / CAP_S
    return max((1.0 - frac) / 0.85, 0.1) if frac >= 0.15 else 1.0


class FakeOpt:
    def set_lr_multiplier(self, mult): self.mult = mult
    def set_muon_momentum(self, m): self.momentum = m
    def set_muon_wd_multiplier(self, m): self.wd_mult = m


def preset_mult(cfg, step: int, t_s: float) -> float:
    st = RunState()
    st.step = step
    return set_schedule(FakeOpt(), None, cfg, st, t_s * 1000.0)


@pytest.fixture(scope="module")
def cfg():
    return resolve_config("record_1855", env={})[0]


def test_preset_cap_is_the_records_599_5_s(cfg):
    assert training_cap_ms(cfg) == 599_500.0


@pytest.mark.parametrize("step,t_s", RECORD_PROFILE)
def test_multiplier_on_the_records_profile(cfg, step, t_s):
    assert preset_mult(cfg, step, t_s) == pytest.approx(record_formula(t_s), abs=1e-12)


def test_multiplier_values_by_hand(cfg):
    assert preset_mult(cfg, 1000, 95.963) == pytest.approx(0.988151, abs=1e-6)
    assert preset_mult(cfg, 3000, 325.621) == pytest.approx(0.537466, abs=1e-6)
    assert preset_mult(cfg, 4500, 537.043) == pytest.approx(0.122567, abs=1e-6)
    assert preset_mult(cfg, 4945, 599.592) == 0.1


def first_time(pred, lo_s: float, hi_s: float) -> float:
    """Smallest t in [lo, hi] (to 1 us) with pred(t), pred monotone."""
    while hi_s - lo_s > 1e-6:
        mid = (lo_s + hi_s) / 2
        lo_s, hi_s = (lo_s, mid) if pred(mid) else (mid, hi_s)
    return hi_s


def test_warmdown_starts_at_15_percent_and_floors_at_91_5_percent(cfg):
    start = first_time(lambda t: preset_mult(cfg, 900, t) < 1.0, 0.0, 599.5)
    floor = first_time(lambda t: preset_mult(cfg, 4900, t) <= 0.1, 0.0, 599.5)
    assert start == pytest.approx(0.15 * 599.5, abs=1e-5)     # 89.925 s
    assert floor == pytest.approx(0.915 * 599.5, abs=1e-5)    # 548.5425 s


def test_loop_switches_on_at_35_percent_of_the_capped_clock(cfg):
    t_on = 0.35 * CAP_S  # 209.825 s; the record logged "layer_loop:enabled step:2178 frac:0.350"
    model = SimpleNamespace(looping_active=False)
    st = RunState()
    st.step = 2177
    assert not set_looping(model, cfg, st, (t_on - 0.001) * 1000.0)
    assert not model.looping_active
    assert set_looping(model, cfg, st, t_on * 1000.0)
    assert model.looping_active
    for step, t_s in RECORD_PROFILE:
        m = SimpleNamespace(looping_active=False)
        st.step = step
        set_looping(m, cfg, st, t_s * 1000.0)
        assert m.looping_active == (t_s / CAP_S >= 0.35)


def test_floor_forms():
    assert floored(0.5, 0.1, "lerp") == pytest.approx(0.55)
    assert floored(0.5, 0.1, "max") == 0.5
    assert floored(0.05, 0.1, "max") == 0.1
    assert floored(0.0, 0.1, "lerp") == pytest.approx(0.1)


def test_frac_warmdown_shape():
    assert frac_warmdown(0.0, 0.85) == 1.0
    assert frac_warmdown(0.1499, 0.85) == 1.0
    assert frac_warmdown(0.575, 0.85) == pytest.approx(0.5)
    assert frac_warmdown(1.0, 0.85) == 0.0
    assert frac_warmdown(0.9, 0.0) == 1.0   # off


def test_frac_without_a_cap_follows_iterations():
    got = [lr_multiplier(s, 0.0, 1000, 0, 0.0, "frac", 0.0, 0.5, "max") for s in (0, 500, 750, 1000)]
    assert got == [1.0, 1.0, pytest.approx(0.5), 0.0]


def test_env_names_of_the_records_run_command():
    cfg, warnings = resolve_config("smoke", env={"WARMDOWN_FRAC": "0.85", "MIN_LR": "0.1", "EMBED_WD": "0.085",
                                                 "GPTQ_RESERVE_SECONDS": "0.5", "ENABLE_LOOPING_AT": "0.35"})
    assert warnings == []
    s = cfg.schedule
    assert (s.warmdown_mode, s.warmdown_frac, s.min_lr_mult, s.min_lr_form) == ("frac", 0.85, 0.1, "max")
    assert (cfg.optim.embed_wd, cfg.quant.gptq_reserve_seconds, cfg.model.loop_enable_at) == (0.085, 0.5, 0.35)


def test_other_presets_keep_their_schedule():
    for name in ("record_549", "record_1128"):
        s = resolve_config(name, env={})[0].schedule
        assert (s.warmdown_mode, s.min_lr_form, s.warmdown_frac) != ("frac", "max", 0.85)
        assert s.min_lr_form == "lerp"


def test_set_schedule_drives_the_optimizer_groups(cfg):
    opts = build_optimizers(FakeModel(), cfg.optim, Comm())
    st = RunState()
    st.step = 3000
    set_schedule(opts, None, cfg, st, 325_621.0)
    assert opts.muon.param_groups[0]["lr"] == pytest.approx(0.026 * record_formula(325.621))
