"""Late schedules: Muon's weight-decay taper (#1729) and the momentum cooldown, from the
formulas through set_schedule to the optimizer groups, the config and the log line."""

import io
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _optim_helpers import FakeModel, batch_for_step  # noqa: E402

from pgolf.config import ConfigError, resolve_config  # noqa: E402
from pgolf.config_tree import Config  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.optim.builder import build_optimizers  # noqa: E402
from pgolf.optim.schedule import (lr_multiplier, momentum_cooldown, muon_momentum_at,  # noqa: E402
                                  wd_taper_multiplier)
from pgolf.train import RunState, log_step, set_schedule  # noqa: E402

# ---------------------------------------------------------------- formulas


@pytest.mark.parametrize("progress,expected", [
    (0.0, 1.0), (0.5, 1.0), (0.7, 1.0), (0.85, 0.75), (0.94, 0.6), (1.0, 0.5), (1.3, 0.5), (-0.2, 1.0)])
def test_wd_taper_of_record_1729(progress, expected):
    # Flat to 70% of training, then linear to half the WD at the end.
    assert wd_taper_multiplier(progress, 0.7, 0.5) == pytest.approx(expected)


def test_wd_taper_is_monotone_and_off_is_exactly_one():
    grid = [i / 200 for i in range(201)]
    down = [wd_taper_multiplier(p, 0.6, 0.2) for p in grid]
    assert all(a >= b for a, b in zip(down, down[1:])) and down[0] == 1.0 and down[-1] == pytest.approx(0.2)
    assert all(wd_taper_multiplier(p, 0.7, 1.0) == 1.0 for p in grid)   # final_mult 1 = off
    assert all(wd_taper_multiplier(p, 1.0, 0.5) == 1.0 for p in grid)   # start 1 = never
    assert wd_taper_multiplier(0.5, 0.0, 0.0) == pytest.approx(0.5)     # from the first step


@pytest.mark.parametrize("progress,expected", [(0.0, 0.95), (0.8, 0.95), (0.9, 0.90), (1.0, 0.85), (2.0, 0.85)])
def test_momentum_cooldown_values(progress, expected):
    assert momentum_cooldown(0.95, progress, 0.8, 0.85) == pytest.approx(expected)


def test_momentum_cooldown_composes_with_warmup_and_off_leaves_it():
    grid = [i / 100 for i in range(101)]
    for step in (0, 300, 2000):
        m = muon_momentum_at(step, 0.85, 0.99, 1500)
        assert all(momentum_cooldown(m, p, 1.0, 0.5) == m for p in grid)   # off: bit-identical
        assert momentum_cooldown(m, 0.4, 0.5, 0.85) == m                   # before the start: unchanged
    seq = [momentum_cooldown(0.99, p, 0.5, 0.85) for p in grid]
    assert all(a >= b for a, b in zip(seq, seq[1:])) and seq[-1] == pytest.approx(0.85)


# ---------------------------------------------------------------- set_schedule


def tiny_config(**schedule) -> Config:
    cfg = Config()
    cfg.run.iterations, cfg.run.max_wallclock_seconds = 100, 0.0
    cfg.schedule.warmdown_iters, cfg.schedule.warmdown_mode = 20, "iters"
    cfg.optim.muon_wd, cfg.optim.adam_wd = 0.04, 0.01
    cfg.optim.muon_momentum, cfg.optim.muon_momentum_warmup_steps = 0.95, 10
    for key, value in schedule.items():
        setattr(cfg.schedule, key, value)
    return cfg


def at_step(step: int) -> RunState:
    st = RunState()
    st.step = step
    return st


def test_taper_sets_muon_wd_at_085_and_leaves_adamw():
    cfg = tiny_config(wd_taper_start=0.7, wd_taper_final_mult=0.5)
    opts = build_optimizers(FakeModel(), cfg.optim, Comm())
    set_schedule(opts, None, cfg, at_step(85), elapsed_ms=0.0)
    assert opts.muon.param_groups[0]["weight_decay"] == pytest.approx(0.04 * 0.75)
    assert [g["weight_decay"] for g in opts.adam.param_groups] == [0.01, 0.01]
    set_schedule(opts, None, cfg, at_step(10), elapsed_ms=0.0)   # back before the start: full WD again
    assert opts.muon.param_groups[0]["weight_decay"] == 0.04


def test_taper_follows_the_wall_clock_cap():
    # 20000 iterations never come; 85% of a 10 s cap does.
    cfg = tiny_config(wd_taper_start=0.7, wd_taper_final_mult=0.5)
    cfg.run.iterations, cfg.run.max_wallclock_seconds, cfg.schedule.warmdown_mode = 20000, 10.0, "auto"
    opts = build_optimizers(FakeModel(), cfg.optim, Comm())
    set_schedule(opts, None, cfg, at_step(85), elapsed_ms=8500.0)
    assert opts.muon.param_groups[0]["weight_decay"] == pytest.approx(0.03)


def test_cooldown_through_set_schedule():
    cfg = tiny_config(momentum_cooldown_start=0.8, momentum_cooldown_final=0.85)
    opts = build_optimizers(FakeModel(), cfg.optim, Comm())
    set_schedule(opts, None, cfg, at_step(90), elapsed_ms=0.0)
    assert opts.muon.param_groups[0]["momentum"] == pytest.approx(0.90)
    set_schedule(opts, None, cfg, at_step(50), elapsed_ms=0.0)
    assert opts.muon.param_groups[0]["momentum"] == 0.95


def run_steps(cfg: Config, plain: bool) -> list[torch.Tensor]:
    """Six optimizer steps near the end of a 10-step run, scheduled by set_schedule or, for
    `plain`, by the lr/momentum calls the loop made before these schedules existed."""
    model = FakeModel(seed=3)
    opts = build_optimizers(model, cfg.optim, Comm())
    r, o, s = cfg.run, cfg.optim, cfg.schedule
    for step in range(4, 10):
        if plain:
            opts.set_lr_multiplier(lr_multiplier(step, 0.0, r.iterations, s.warmdown_iters, 0.0, "iters"))
            opts.set_muon_momentum(muon_momentum_at(step, o.muon_momentum_warmup_start, o.muon_momentum,
                                                    o.muon_momentum_warmup_steps))
        else:
            set_schedule(opts, None, cfg, at_step(step), elapsed_ms=0.0)
        ids, tgt = batch_for_step(step)
        model(ids, tgt).backward()
        opts.reduce_and_step(model, 1.0, "local")
    return [p.detach().clone() for p in model.parameters()]


def short_config(**schedule) -> Config:
    cfg = tiny_config(**schedule)
    cfg.run.iterations, cfg.schedule.warmdown_iters, cfg.optim.muon_momentum_warmup_steps = 10, 4, 3
    cfg.optim.muon_wd = 0.5   # large, so a taper shows in a few steps
    return cfg


def test_off_is_bit_identical_to_the_plain_schedule():
    plain = run_steps(short_config(), plain=True)
    off = run_steps(short_config(wd_taper_start=0.3, wd_taper_final_mult=1.0,
                                 momentum_cooldown_start=1.0, momentum_cooldown_final=0.5), plain=False)
    assert all(torch.equal(a, b) for a, b in zip(plain, off))
    tapered = run_steps(short_config(wd_taper_start=0.3, wd_taper_final_mult=0.0), plain=False)
    assert not all(torch.equal(a, b) for a, b in zip(plain, tapered))
    cooled = run_steps(short_config(momentum_cooldown_start=0.3, momentum_cooldown_final=0.5), plain=False)
    assert not all(torch.equal(a, b) for a, b in zip(plain, cooled))


def test_taper_survives_a_checkpoint_without_base_wd():
    # Optimizer states saved before the taper existed have no "base_wd" in Muon's group.
    cfg = tiny_config(wd_taper_start=0.7, wd_taper_final_mult=0.5)
    opts = build_optimizers(FakeModel(), cfg.optim, Comm())
    state = opts.state_dict()
    for group in state["muon"]["param_groups"]:
        del group["base_wd"]
    blob = io.BytesIO()
    torch.save(state, blob)
    fresh = build_optimizers(FakeModel(), cfg.optim, Comm())
    fresh.load_state_dict(torch.load(io.BytesIO(blob.getvalue())))
    for step in (85, 95):   # twice: the second call must not taper the tapered value again
        set_schedule(fresh, None, cfg, at_step(step), elapsed_ms=0.0)
    assert fresh.muon.param_groups[0]["weight_decay"] == pytest.approx(0.04 * wd_taper_multiplier(0.95, 0.7, 0.5))


# ---------------------------------------------------------------- log line


class Events:
    def __init__(self) -> None:
        self.lines: list[dict] = []

    def event(self, **fields) -> None:
        self.lines.append(fields)


@pytest.mark.parametrize("final_mult,logged", [(0.5, 0.75), (1.0, None)])
def test_log_line_shows_wd_mult_only_while_tapering(final_mult, logged):
    cfg = tiny_config(wd_taper_start=0.7, wd_taper_final_mult=final_mult)
    opts = build_optimizers(FakeModel(), cfg.optim, Comm())
    st = at_step(85)
    mult = set_schedule(opts, None, cfg, st, elapsed_ms=0.0)
    log = Events()
    log_step(log, st, cfg, 2.5, mult, opts, (0, 0.0))
    line = log.lines[0]
    assert {"lr_mult", "momentum", "step_ms"} <= set(line)
    assert line.get("wd_mult") == (None if logged is None else pytest.approx(logged))


# ---------------------------------------------------------------- config


def test_challenge_env_names_set_the_taper():
    env = {"WD_TAPER_START_FRAC": "0.70", "WD_TAPER_FINAL_MULT": "0.50"}
    cfg, warnings = resolve_config("smoke", None, env, [])
    assert (cfg.schedule.wd_taper_start, cfg.schedule.wd_taper_final_mult) == (0.7, 0.5)
    assert warnings == []


def test_defaults_are_off():
    s = Config().schedule
    assert wd_taper_multiplier(0.99, s.wd_taper_start, s.wd_taper_final_mult) == 1.0
    assert momentum_cooldown(0.95, 0.99, s.momentum_cooldown_start, s.momentum_cooldown_final) == 0.95


@pytest.mark.parametrize("sets,key", [
    (["schedule.wd_taper_start=1.5"], "schedule.wd_taper_start"),
    (["schedule.wd_taper_start=-0.1"], "schedule.wd_taper_start"),
    (["schedule.wd_taper_final_mult=-0.5"], "schedule.wd_taper_final_mult"),
    (["schedule.wd_taper_final_mult=nan"], "schedule.wd_taper_final_mult"),
    (["schedule.momentum_cooldown_start=2"], "schedule.momentum_cooldown_start"),
    (["schedule.momentum_cooldown_final=1.0"], "schedule.momentum_cooldown_final"),
    # A cooldown that ends above the momentum it starts from would raise it.
    (["optim.muon_momentum=0.95", "schedule.momentum_cooldown_start=0.8", "schedule.momentum_cooldown_final=0.99"],
     "schedule.momentum_cooldown_final"),
])
def test_bad_values_are_refused_in_one_line(sets, key):
    with pytest.raises(ConfigError) as e:
        resolve_config("smoke", None, {}, sets)
    msg = str(e.value)
    assert key in msg and "\n" not in msg, msg


def test_edges_that_work_are_accepted():
    sets = ["schedule.wd_taper_start=0", "schedule.wd_taper_final_mult=0", "optim.muon_momentum=0.95",
            "schedule.momentum_cooldown_start=0.5", "schedule.momentum_cooldown_final=0.95"]
    cfg, _ = resolve_config("smoke", None, {}, sets)
    assert cfg.schedule.momentum_cooldown_final == 0.95
