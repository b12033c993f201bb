"""Pure schedule functions: Muon momentum warm-up and cooldown, the lr warmdown multiplier
and the late weight-decay taper."""

from pgolf.optim.errors import OptimError

_SCHED_MODES = ("auto", "time", "iters", "frac")
_FLOOR_FORMS = ("lerp", "max")


def muon_momentum_at(step: int, start: float, final: float, warmup_steps: int) -> float:
    """Linear ramp from `start` at step 0 to `final` at `warmup_steps`, then constant.

    momentum = (1 - f) * start + f * final with f = min(step / warmup_steps, 1);
    warmup_steps <= 0 means `final` from the first step.
    """
    if warmup_steps <= 0:
        return final
    frac = min(max(step, 0) / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * final


def late_fraction(progress: float, start_frac: float) -> float:
    """How far past `start_frac` training is, 0..1: clamp((progress - start_frac) / (1 - start_frac));
    always 0 when start_frac >= 1 (the schedule is off)."""
    if start_frac >= 1.0:
        return 0.0
    return min(max((progress - start_frac) / (1.0 - start_frac), 0.0), 1.0)


def wd_taper_multiplier(progress: float, start_frac: float, final_mult: float) -> float:
    """Factor on Muon's weight decay (#1729: start_frac 0.70, final_mult 0.50).

    mult = 1 for progress <= start_frac, then 1 + (final_mult - 1) * (progress - start_frac)
    / (1 - start_frac), reaching final_mult at progress 1 (progress is clamped to [0, 1]).
    final_mult = 1 or start_frac >= 1 is off (exactly 1.0).
    """
    if final_mult == 1.0:
        return 1.0
    return 1.0 + (final_mult - 1.0) * late_fraction(progress, start_frac)


def momentum_cooldown(momentum: float, progress: float, start_frac: float, final: float) -> float:
    """Muon momentum brought down late in training (modded-nanogpt style).

    Returns `momentum` (the warm-up value) while progress <= start_frac, then the linear
    blend (1 - f) * momentum + f * final with f = (progress - start_frac) / (1 - start_frac),
    clamped to [0, 1]; `final` at progress 1. start_frac >= 1 is off (momentum unchanged).
    """
    if start_frac >= 1.0:
        return momentum
    frac = late_fraction(progress, start_frac)
    return (1.0 - frac) * momentum + frac * final


def _iters(step: int, iterations: int, warmdown_iters: int) -> float:
    if warmdown_iters <= 0:
        return 1.0
    start = iterations - warmdown_iters
    if step < start:
        return 1.0
    return min(max((iterations - step) / warmdown_iters, 0.0), 1.0)


def _time(step: int, elapsed_ms: float, warmdown_iters: int, max_wallclock_ms: float) -> float:
    if step <= 0 or warmdown_iters <= 0:
        return 1.0
    warmdown_ms = warmdown_iters * (elapsed_ms / step)
    remaining_ms = max(max_wallclock_ms - elapsed_ms, 0.0)
    return remaining_ms / warmdown_ms if remaining_ms < warmdown_ms else 1.0


def training_fraction(step: int, elapsed_ms: float, iterations: int, max_wallclock_ms: float) -> float:
    """How far training is, 0..1: whichever of step / iterations and elapsed_ms / max_wallclock_ms
    (when there is a cap) is further along, clamped to 1."""
    done = step / max(iterations, 1)
    if max_wallclock_ms > 0:
        done = max(done, elapsed_ms / max_wallclock_ms)
    return min(done, 1.0)


def frac_warmdown(progress: float, warmdown_frac: float) -> float:
    """1 until progress reaches 1 - warmdown_frac, then (1 - progress) / warmdown_frac, 0 at the
    end (#1855's WARMDOWN_FRAC schedule); warmdown_frac <= 0 disables it (always 1)."""
    if warmdown_frac <= 0 or progress < 1.0 - warmdown_frac:
        return 1.0
    return max((1.0 - progress) / warmdown_frac, 0.0)


def floored(mult: float, floor: float, form: str = "lerp") -> float:
    """The multiplier kept above `floor`: "lerp" rescales it to floor + (1 - floor) * mult (the
    whole warmdown is compressed, floor reached only at the end); "max" cuts it at the floor,
    max(mult, floor), so the slope is unchanged and the floor holds over the last stretch (#1855)."""
    if form not in _FLOOR_FORMS:
        raise OptimError(f"min_lr_form={form!r} is unknown; use one of {_FLOOR_FORMS}")
    return max(mult, floor) if form == "max" else floor + (1.0 - floor) * mult


def lr_multiplier(step: int, elapsed_ms: float, iterations: int, warmdown_iters: int,
                  max_wallclock_ms: float, mode: str = "auto", floor: float = 0.0,
                  warmdown_frac: float = 0.0, floor_form: str = "lerp") -> float:
    """The warmdown multiplier (see warmdown_multiplier), kept above `floor` (see floored).

    mode "frac" runs frac_warmdown on training_fraction (the wall-clock fraction of the capped
    budget whenever it is ahead of the iteration fraction, as in every capped run).
    """
    if mode not in _SCHED_MODES:
        raise OptimError(f"warmdown_mode={mode!r} is unknown; use one of {_SCHED_MODES}")
    if mode == "frac":
        mult = frac_warmdown(training_fraction(step, elapsed_ms, iterations, max_wallclock_ms), warmdown_frac)
    else:
        mult = warmdown_multiplier(step, elapsed_ms, iterations, warmdown_iters, max_wallclock_ms, mode)
    return floored(mult, floor, floor_form)


def warmdown_multiplier(step: int, elapsed_ms: float, iterations: int, warmdown_iters: int,
                        max_wallclock_ms: float, mode: str = "auto") -> float:
    """Multiplier applied to every base lr at `step` (steps already taken = `step`).

    - "iters": 1.0 while step < iterations - warmdown_iters, then
      (iterations - step) / warmdown_iters, i.e. linear down to 0 at step == iterations
      (and 0 beyond it; the reference returns 1.0 past `iterations`, which never matters).
    - "time": the warmdown lasts the time `warmdown_iters` steps take at the average step
      time so far: warmdown_ms = warmdown_iters * elapsed_ms / step. With
      remaining_ms = max(max_wallclock_ms - elapsed_ms, 0), the multiplier is
      remaining_ms / warmdown_ms once remaining_ms < warmdown_ms, else 1.0; 1.0 at step 0.
      It reaches 0 exactly when the wall-clock budget is spent.
    - "auto": whichever of "time" and "iters" is lower when max_wallclock_ms > 0 (a run
      that stops on `iterations` long before the cap still anneals), else "iters".
    warmdown_iters <= 0 disables the warmdown (always 1.0). ("frac" lives in lr_multiplier.)
    """
    if mode not in _SCHED_MODES[:3]:
        raise OptimError(f"warmdown_mode={mode!r} is unknown here; use one of {_SCHED_MODES[:3]} "
                         "(lr_multiplier also takes 'frac')")
    if mode == "auto":
        if max_wallclock_ms <= 0:
            return _iters(step, iterations, warmdown_iters)
        return min(_time(step, elapsed_ms, warmdown_iters, max_wallclock_ms),
                   _iters(step, iterations, warmdown_iters))
    if mode == "time":
        if max_wallclock_ms <= 0:
            raise OptimError(f"warmdown_mode='time' needs max_wallclock_ms > 0 (got {max_wallclock_ms}); "
                             "set a wall-clock cap or use 'iters'")
        return _time(step, elapsed_ms, warmdown_iters, max_wallclock_ms)
    return _iters(step, iterations, warmdown_iters)
