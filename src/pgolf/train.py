"""The training loop: one step, the schedule, compile priming, and the loop that runs
steps until the iteration or wall-clock budget ends (see wallclock.py for what it counts).

The loop never waits for the device per step: losses stay on the device and the clock
is read exactly only at log lines, checkpoints, validation and planned cap checks.
"""

import copy
import math
import os
import signal
import time

import torch

from pgolf.checkpoint import save_checkpoint
from pgolf.config import config_to_toml
from pgolf.config_tree import Config
from pgolf.data.paths import ValData
from pgolf.dist import Comm
from pgolf.errors import TrainingError
from pgolf.eval.bpb import eval_plain
from pgolf.hw import compute_autocast, device_sync
from pgolf.model.stack import looping_due
from pgolf.optim.schedule import (lr_multiplier, momentum_cooldown, muon_momentum_at, training_fraction,
                                  wd_taper_multiplier)
from pgolf.progress import Progress
from pgolf.runlog import RunLog
from pgolf.wallclock import AutoCheckpoints, CapSchedule, TrainClock, training_cap_ms


class RunState:
    """Everything the loop mutates, so checkpoints and priming can save/restore it."""

    def __init__(self) -> None:
        self.step = 0
        self.train_ms = 0.0
        self.last_finite_loss = float("nan")
        self.qat_active = False


# ---------------------------------------------------------------- one step

def train_step(model, fwd, opt, loader, cfg: Config, accum: int, device) -> torch.Tensor:
    """Forward/backward over `accum` micro-batches, then reduce and step. Returns the loss."""
    total = torch.zeros((), device=device)
    for _ in range(accum):
        x, y = loader.next_batch(cfg.run.train_batch_tokens, cfg.run.train_seq_len, accum)
        with compute_autocast(device):
            loss = fwd(x, y)
        (loss / accum).backward()
        total += loss.detach() / accum
    opt.reduce_and_step(model, cfg.optim.grad_clip_norm, cfg.optim.grad_clip_mode)
    return total


def set_schedule(opt, qat, cfg: Config, st: RunState, elapsed_ms: float) -> float:
    """Apply the lr multiplier, Muon momentum (warm-up, late cooldown), Muon's weight-decay
    taper and late-QAT switch for the coming step."""
    r, o, s = cfg.run, cfg.optim, cfg.schedule
    mult = lr_multiplier(st.step, elapsed_ms, r.iterations, s.warmdown_iters,
                         training_cap_ms(cfg), s.warmdown_mode, s.min_lr_mult, s.warmdown_frac, s.min_lr_form)
    opt.set_lr_multiplier(mult)
    momentum = muon_momentum_at(st.step, o.muon_momentum_warmup_start, o.muon_momentum,
                                o.muon_momentum_warmup_steps)
    # Both late schedules follow training_progress, so they track the wall-clock cap like
    # the warmdown does (a taper keyed on iterations alone never fires under the cap).
    progress = training_progress(st, cfg, elapsed_ms)
    opt.set_muon_momentum(momentum_cooldown(momentum, progress, s.momentum_cooldown_start,
                                            s.momentum_cooldown_final))
    opt.set_muon_wd_multiplier(wd_taper_multiplier(progress, s.wd_taper_start, s.wd_taper_final_mult))
    thr = cfg.quant.late_qat_threshold
    if qat is not None and thr > 0 and not st.qat_active and mult < thr:
        st.qat_active = True
        qat.active = True
    return mult


def training_progress(st: RunState, cfg: Config, elapsed_ms: float) -> float:
    """How far training is, 0..1: whichever of the iteration and wall-clock budgets is further
    (the same fraction drives warmdown_mode "frac", the loop switch and the late schedules)."""
    return training_fraction(st.step, elapsed_ms, cfg.run.iterations, training_cap_ms(cfg))


def set_looping(model, cfg: Config, st: RunState, elapsed_ms: float) -> bool:
    """Progressive depth recurrence: switch the loop on once training is far enough
    (model.loop_enable_at). Returns True on the step it switches on."""
    if cfg.model.num_loops <= 0 or model.looping_active:
        return False
    model.looping_active = looping_due(cfg.model, training_progress(st, cfg, elapsed_ms))
    return model.looping_active


def prime(model, fwd, opt, loader, cfg: Config, accum: int, device, log: RunLog, qat=None) -> None:
    """Run warm-up steps to compile kernels, then restore weights, optimizer and data.

    With late QAT under torch.compile one more step runs with QAT on, so its graph is
    compiled here and the switch late in the timed run costs no compilation.
    """
    n = cfg.schedule.warmup_steps
    if n <= 0:
        return
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), loader.state())
    t0 = time.perf_counter()
    qat_primed = qat is not None and cfg.model.compile
    loop_primed = cfg.model.compile and cfg.model.num_loops > 0 and not model.looping_active
    # One line a step: compiling makes single steps take minutes.
    lines = Progress(log.line, "priming", n + int(qat_primed) + int(loop_primed), every_s=0.0)
    lines.step(0)
    for i in range(n):
        primed_step(model, fwd, opt, loader, cfg, accum, device, lines, i + 1)
    if qat_primed:
        qat.active = True
        primed_step(model, fwd, opt, loader, cfg, accum, device, lines, n + 1)
        qat.active = False
    if loop_primed:
        # Likewise the looped graph, which progressive recurrence switches to mid-run.
        model.looping_active = True
        primed_step(model, fwd, opt, loader, cfg, accum, device, lines, lines.total)
        model.looping_active = False
    device_sync(device)
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    loader.load_state(saved[2])
    opt.zero_grad(set_to_none=True)
    log.event(event="priming_done", steps=lines.total, qat_graph=qat_primed,
              loop_graph=loop_primed,
              seconds=round(time.perf_counter() - t0, 2))


def primed_step(model, fwd, opt, loader, cfg: Config, accum: int, device, lines: Progress, done: int) -> None:
    """One priming step, waited for so its line's ETA counts the step."""
    train_step(model, fwd, opt, loader, cfg, accum, device)
    device_sync(device)
    lines.step(done)


# ---------------------------------------------------------------- the loop

def nonfinite_error(loss: float, step: int, last_finite: float, out_dir: str) -> TrainingError:
    return TrainingError(
        f"train loss is {loss} at step {step} (last finite loss {last_finite:.4f}); "
        f"lower optim.matrix_lr / optim.scalar_lr or set optim.grad_clip_norm; "
        f"log and checkpoints in {out_dir} are kept")


def check_finite(loss: float, st: RunState, out_dir: str) -> None:
    if math.isfinite(loss):
        st.last_finite_loss = loss
        return
    raise nonfinite_error(loss, st.step + 1, st.last_finite_loss, out_dir)


class LossWatch:
    """Step losses kept on the device: the first non-finite step and the last finite loss
    are tracked there, so nothing is read back to the host until a check point."""

    def __init__(self, device, last_finite: float) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_value = torch.zeros((), device=device)
        self.last_finite = torch.full((), last_finite, device=device)
        self.last: torch.Tensor | None = None

    def update(self, loss: torch.Tensor, step: int) -> None:
        """`step` is the 1-based number of the step that produced `loss`."""
        ok = torch.isfinite(loss)
        new_bad = (self.first_bad < 0) & ~ok
        self.first_bad = torch.where(new_bad, step, self.first_bad)
        self.bad_value = torch.where(new_bad, loss, self.bad_value)
        self.last_finite = torch.where(ok & (self.first_bad < 0), loss, self.last_finite)
        self.last = loss

    def check(self, st: RunState, out_dir: str) -> None:
        """Raise on a non-finite loss seen since the start (reads the device: a sync)."""
        bad, value, last = self.first_bad.item(), self.bad_value.item(), self.last_finite.item()
        st.last_finite_loss = last
        if bad >= 0:
            raise nonfinite_error(value, bad, last, out_dir)


def log_step(log: RunLog, st: RunState, cfg: Config, loss: float, mult: float, opt,
             interval: tuple[int, float]) -> None:
    """One step line; step_ms is the mean over the steps since the previous line."""
    r = cfg.run
    avg_ms = st.train_ms / max(st.step, 1)
    step_ms = (st.train_ms - interval[1]) / max(st.step - interval[0], 1)
    left = (r.iterations - st.step) * avg_ms
    if training_cap_ms(cfg) > 0:
        left = min(left, training_cap_ms(cfg) - st.train_ms)
    group = opt.muon.param_groups[0]
    # Logged only while the taper is on, so lines of runs without it keep their exact keys.
    taper = ({"wd_mult": round(group["weight_decay"] / group["base_wd"], 4)}
             if cfg.schedule.wd_taper_final_mult != 1.0 and group.get("base_wd") else {})
    log.event(step=f"{st.step}/{r.iterations}", train_loss=round(loss, 4), lr_mult=round(mult, 4),
              momentum=round(group["momentum"], 4), **taper, step_ms=round(step_ms, 1),
              step_avg_ms=round(avg_ms, 1), tokens_per_s=int(r.train_batch_tokens / max(avg_ms, 1e-9) * 1000),
              train_time_s=round(st.train_ms / 1000, 1), eta_s=round(max(left, 0) / 1000, 1))


def session_step_ms(st: RunState, session: tuple[int, float]) -> float:
    return (st.train_ms - session[1]) / max(st.step - session[0], 1)


def checkpoint_due(every: int, st: RunState, auto, clock: TrainClock, session: tuple[int, float]) -> bool:
    """Whether this step writes a checkpoint (reads the clock exactly when it might)."""
    if every > 0:
        if st.step % every:
            return False
        st.train_ms = clock.elapsed_ms()
        return True
    if auto is None or not auto.due(st.step):
        return False
    st.train_ms = clock.elapsed_ms()
    return auto.check(st.step, st.train_ms, session_step_ms(st, session))


def run_loop(model, fwd, opt, loader, ema, swa, st: RunState, cfg: Config, comm: Comm, device,
             accum: int, val: ValData, log: RunLog, out_dir: str, qat=None) -> str:
    """Train until run.iterations or the wall-clock cap; returns why it stopped.

    No host sync per step: the loss stays on the device and the clock is read exactly only
    at log lines, checkpoints, validation and the cap checks `CapSchedule` spaces out.
    """
    r, s = cfg.run, cfg.schedule
    clock = TrainClock(device, st.train_ms)
    cap = CapSchedule(training_cap_ms(cfg), comm, device)
    watch = LossWatch(device, st.last_finite_loss)
    session = (st.step, st.train_ms)  # steps and time before this process started
    logged = session
    fault_step = int(os.environ.get("PGOLF_FAULT_AFTER_STEP", "-1"))
    auto = None
    if r.checkpoint_every < 0:
        auto = AutoCheckpoints(comm, device, st.train_ms)
        if comm.is_main:
            log.event(event="checkpoints", mode="auto", min_interval_s=auto.min_interval_ms / 1000,
                      max_share_of_training=auto.max_share)
    clock.start()
    mult = 1.0
    while True:
        if st.step >= r.iterations:
            reason = "iterations"
            break
        if cap.due(st.step):
            st.train_ms = clock.elapsed_ms()
            watch.check(st, out_dir)
            if cap.check(st.step, st.train_ms, st.step - session[0], st.train_ms - session[1]):
                reason = "wallclock_cap"
                break
        if r.val_loss_every and st.step and st.step % r.val_loss_every == 0:
            with clock.paused():
                res = eval_plain(model, val.tokens, cfg.eval.seq_len, cfg.eval.batch_tokens,
                                 val.tables, comm, device)
            log.event(step=st.step, val_loss=round(res["val_loss"], 4), val_bpb=round(res["val_bpb"], 4))
        if set_looping(model, cfg, st, clock.host_ms()):
            log.event(event="looping_on", step=st.step, loops=cfg.model.num_loops)
        qat_before = st.qat_active
        mult = set_schedule(opt, qat, cfg, st, clock.host_ms())
        if st.qat_active and not qat_before:
            log.event(event="late_qat_on", step=st.step, lr_mult=round(mult, 4), scope=cfg.quant.qat_scope,
                      bits=cfg.quant.matrix_bits if cfg.quant.qat_scope == "matrices" else 6)
        loss = train_step(model, fwd, opt, loader, cfg, accum, device)
        st.step += 1
        watch.update(loss, st.step)
        if ema is not None:
            ema.update(model)
        if swa is not None:
            swa.maybe_snapshot(ema.shadow if swa.source == "ema" else model,
                               st.step, mult, s.swa_every, s.swa_threshold)
        if r.train_log_every and (st.step % r.train_log_every == 0 or st.step <= 5):
            st.train_ms = clock.elapsed_ms()
            watch.check(st, out_dir)
            log_step(log, st, cfg, loss.item(), mult, opt, logged)
            logged = (st.step, st.train_ms)
        # Tested first so that a bundle frozen to checkpoint_every = 0 ships no checkpoint code.
        if r.checkpoint_every and checkpoint_due(r.checkpoint_every, st, auto, clock, session):
            watch.check(st, out_dir)
            t0 = time.perf_counter()
            save_checkpoint(out_dir, comm.rank, model, opt, loader, ema, swa, st, config_to_toml(cfg))
            write_ms = (time.perf_counter() - t0) * 1000.0
            if auto is not None:
                auto.written(st.step, st.train_ms, write_ms, session_step_ms(st, session))
            if st.step == fault_step:
                # Fault injection for resume tests: die like a preempted job, no cleanup.
                os.kill(os.getpid(), signal.SIGKILL)
    st.train_ms = clock.elapsed_ms()
    watch.check(st, out_dir)
    return reason
