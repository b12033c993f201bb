"""The training clock: the challenge's wall-clock budget, read without a host sync per step.

What counts (as the reference counts it): every second from the first timed training step
to the end of training, EMA/SWA updates, logging and checkpoints included; only validation
pauses are left out. Reading the host clock is free but the host runs ahead of the GPU, so
an exact reading needs a device sync, and a sync per step keeps the host from queueing the
next step while the GPU works. The loop therefore syncs only at check points: log lines,
checkpoints, validation, and cap checks that `CapSchedule` spaces so the cap is overshot by
at most about `slack_ms` (one step when the predicted end falls between checks).
"""

import math
import time
from contextlib import contextmanager

import torch

from pgolf.config_tree import Config
from pgolf.dist import Comm
from pgolf.hw import device_sync


def training_cap_ms(cfg: Config) -> float:
    """The training loop's wall-clock cap in ms (0 = none): run.max_wallclock_seconds less
    quant.gptq_reserve_seconds, because the challenge counts calibration + GPTQ as training."""
    wall = cfg.run.max_wallclock_seconds
    if wall <= 0:
        return 0.0
    return max(wall - cfg.quant.gptq_reserve_seconds, 0.0) * 1000.0


class TrainClock:
    """Milliseconds of training time; `offset_ms` carries time from before a resume."""

    def __init__(self, device: torch.device, offset_ms: float = 0.0) -> None:
        self.device = device
        self.offset_ms = offset_ms
        self.paused_ms = 0.0
        self.t0 = time.perf_counter()

    def start(self) -> None:
        device_sync(self.device)
        self.t0 = time.perf_counter()
        self.paused_ms = 0.0

    def host_ms(self) -> float:
        """No sync: the host's view, ahead of the device by the queued work (for schedules)."""
        return self.offset_ms + (time.perf_counter() - self.t0) * 1000.0 - self.paused_ms

    def elapsed_ms(self) -> float:
        """Exact: waits for the device first."""
        device_sync(self.device)
        return self.host_ms()

    @contextmanager
    def paused(self):
        """Time inside is not training time (validation)."""
        device_sync(self.device)
        t = time.perf_counter()
        try:
            yield
        finally:
            device_sync(self.device)
            self.paused_ms += (time.perf_counter() - t) * 1000.0


class CapSchedule:
    """When to check the wall-clock cap: often enough to overshoot it by < slack_ms, rarely
    enough that the syncs cost nothing. Ranks agree on the stop and on the next check step
    because both are computed from all-reduced numbers."""

    def __init__(self, cap_ms: float, comm: Comm, device: torch.device, slack_ms: float = 500.0) -> None:
        self.cap_ms, self.comm, self.device, self.slack_ms = cap_ms, comm, device, slack_ms
        self.enabled = cap_ms > 0
        self.next_step = 0  # check before the very first step: a resumed run may be done

    def due(self, step: int) -> bool:
        return self.enabled and step >= self.next_step

    def check(self, step: int, elapsed_ms: float, session_steps: int, session_ms: float) -> bool:
        """True when the cap is reached; otherwise schedules the next check."""
        vals = torch.tensor([elapsed_ms, session_ms / max(session_steps, 1)], device=self.device)
        self.comm.all_reduce_max(vals)  # the slowest rank decides, identically everywhere
        elapsed, step_ms = (float(v) for v in vals.tolist())
        if elapsed >= self.cap_ms:
            return True
        if session_steps == 0 or step_ms <= 0:
            self.next_step = step + 1
            return False
        left_steps = math.floor((self.cap_ms - elapsed) / step_ms)
        self.next_step = step + max(1, min(int(self.slack_ms / step_ms), left_steps))
        return False


class AutoCheckpoints:
    """`run.checkpoint_every = -1`: checkpoint when both `min_interval_ms` of training and
    `1 / max_share` times the last write's duration have passed since the last one, so
    writes cost at most `max_share` of training time (the 2% the default promises).

    Like CapSchedule, the decision is made at planned steps from all-reduced numbers, so
    every rank writes its checkpoint at the same step; between those steps nothing syncs.
    """

    def __init__(self, comm: Comm, device: torch.device, start_ms: float,
                 min_interval_ms: float = 60_000.0, max_share: float = 0.02) -> None:
        self.comm, self.device = comm, device
        self.min_interval_ms, self.max_share = min_interval_ms, max_share
        self.last_ms, self.write_ms = start_ms, 0.0
        self.next_step = 1

    def due(self, step: int) -> bool:
        return step >= self.next_step

    def interval_ms(self) -> float:
        return max(self.min_interval_ms, self.write_ms / self.max_share)

    def check(self, step: int, elapsed_ms: float, step_ms: float) -> bool:
        """True: write a checkpoint now (then call `written`). Else plans the next check."""
        vals = torch.tensor([elapsed_ms, step_ms], device=self.device)
        self.comm.all_reduce_max(vals)
        elapsed, step_ms = (float(v) for v in vals.tolist())
        wait = self.interval_ms() - (elapsed - self.last_ms)
        if wait <= 0:
            return True
        self.next_step = step + max(1, math.floor(wait / max(step_ms, 1e-3)))
        return False

    def written(self, step: int, elapsed_ms: float, write_ms: float, step_ms: float) -> None:
        vals = torch.tensor([elapsed_ms, write_ms], device=self.device)
        self.comm.all_reduce_max(vals)
        self.last_ms, self.write_ms = (float(v) for v in vals.tolist())
        self.next_step = step + max(1, math.floor(self.interval_ms() / max(step_ms, 1e-3)))
