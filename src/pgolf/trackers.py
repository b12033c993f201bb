"""Experiment trackers (TensorBoard, W&B) fed the same scalars as the run's log.

Each tracker is a RunLog sink: it receives every log line as parse_event's dict and keeps
its numbers. Tags follow the line's kind: `train/train_loss` (step lines), `val/val_bpb`,
`<event>/<key>` for `event:` lines (at the last step seen), `eval_<mode>/running_bpb` per
chunk or window for eval progress. `check_trackers` runs at config time, so a missing
package is a one-line error before any training, never a crash mid-run.
"""

import importlib.util
from pathlib import Path
from typing import Any

from pgolf.config_checks import TRACKERS_KNOWN, tracker_names
from pgolf.errors import PgolfError

# Keys that are labels or counters of a line, not measurements.
TRACKER_SKIP = frozenset({"step", "event", "eval", "audit", "section", "mode", "reason", "eta", "tokens"})
TRACKER_MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}


class TrackerError(PgolfError, RuntimeError):
    """A tracker that cannot run here (one line naming the package to install)."""


def check_trackers(spec: str) -> list[str]:
    """The tracker names of run.trackers, after making sure each one's package is installed."""
    names = tracker_names(spec)
    for n in names:
        if n not in TRACKERS_KNOWN:
            raise TrackerError(f"run.trackers: unknown tracker {n!r}; use {', '.join(TRACKERS_KNOWN)}")
        probe = "tensorboard" if n == "tensorboard" else TRACKER_MODULES[n]
        if importlib.util.find_spec(probe) is None:
            raise TrackerError(f"run.trackers: {n} is not installed; pip install {TRACKERS_KNOWN[n]} "
                               f"(or pip install 'pgolf[plot]' for tensorboard), or drop it from run.trackers")
    return names


def _tracker_number(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


class ScalarRouter:
    """Turns log lines into (tag, value, step) triples; the step of an event is the last step seen."""

    def __init__(self) -> None:
        self.step = 0

    def scalars(self, ev: dict[str, str]) -> list[tuple[str, float, int]]:
        step, prefix = self.step, ""
        if ev.get("event") == "config":
            return []  # settings, not measurements: trackers get them as the run's config
        if "event" in ev:
            prefix = ev["event"]
        elif "eval" in ev:
            prefix = f"eval_{ev['eval']}"
            counter = next((ev[k] for k in ("chunks", "windows", "batches") if k in ev), "")
            step = int(counter.split("/")[0]) if counter.split("/")[0].isdigit() else step
        elif "step" in ev and ev["step"].split("/")[0].isdigit():
            step = self.step = int(ev["step"].split("/")[0])
            prefix = "val" if "val_loss" in ev or "val_bpb" in ev else "train"
        if not prefix:
            return []
        out = []
        for k, v in ev.items():
            x = _tracker_number(v) if k not in TRACKER_SKIP else None
            if x is not None:
                out.append((f"{prefix}/{k}", x, step))
        return out


class TensorBoardSink:
    """Writes the log's scalars as TensorBoard events under <run>/tensorboard."""

    name = "tensorboard"

    def __init__(self, run_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.router = ScalarRouter()

    def __call__(self, ev: dict[str, str]) -> None:
        for tag, value, step in self.router.scalars(ev):
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Sends the log's scalars to a W&B run named after the run folder (mode from WANDB_MODE)."""

    name = "wandb"

    def __init__(self, run_dir: str | Path, config: dict[str, Any] | None = None) -> None:
        import wandb
        self.wandb = wandb
        self.run = wandb.init(name=Path(run_dir).resolve().name, dir=str(run_dir), config=config or {},
                              reinit=True)
        self.router = ScalarRouter()

    def __call__(self, ev: dict[str, str]) -> None:
        for tag, value, step in self.router.scalars(ev):
            self.run.log({tag: value, "step": step})

    def close(self) -> None:
        self.run.finish()


def open_trackers(spec: str, run_dir: str | Path, config: dict[str, Any] | None = None) -> list[Any]:
    """The sinks run.trackers asks for, opened on `run_dir` (call on the main rank only)."""
    sinks: list[Any] = []
    for n in check_trackers(spec):
        try:
            sinks.append(TensorBoardSink(run_dir) if n == "tensorboard" else WandbSink(run_dir, config))
        except ImportError as e:
            raise TrackerError(f"run.trackers: {n} cannot start ({e}); pip install {TRACKERS_KNOWN[n]}") from None
    return sinks
