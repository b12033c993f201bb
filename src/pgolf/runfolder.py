"""Run folders: which folders pgolf may write into, and what a failed start leaves behind.

A run folder carries a marker, `.pgolf-run` (JSON: format, state), written before anything
else. pgolf writes only into a folder that is empty or carries its marker, so `--out`
pointed at a user's own files never overwrites them. States: "new" (set up, no training
step yet), "training", "done". A run that fails while "new" has produced nothing worth
keeping: its files are removed (and the folder, when this run created it), so a retry
with the same `--out` just works.
"""

import json
import shutil
from pathlib import Path

from pgolf.errors import TrainingError
from pgolf.runlog import write_json_atomic

MARKER = ".pgolf-run"
# What a run writes before its first step; removed again when it fails that early.
SETUP_FILES = ("log.txt", "config.toml", MARKER)


def read_state(folder: Path) -> str | None:
    """The marker's state, or None when the folder carries no (readable) marker."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("state") if isinstance(data, dict) else None


class RunFolder:
    """A claimed run folder (main rank only writes; other ranks hold a read-only view)."""

    def __init__(self, path: Path, created: bool, writer: bool) -> None:
        self.path, self.created, self.writer = path, created, writer
        self.state = read_state(path) or "new"

    @classmethod
    def claim_new(cls, path: str | Path, writer: bool = True) -> "RunFolder":
        """Claim `path` for a new run, refusing anything that is not ours to overwrite."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise TrainingError(f"--out {p} is a file, not a folder: choose a folder path for the run")
        created = False
        if p.is_dir():
            entries = [e.name for e in p.iterdir()]
            state = read_state(p)
            if state in ("training", "done"):
                raise TrainingError(f"{p} already holds a run ({state}): pass --resume {p} to continue it "
                                    "or choose another --out (nothing was changed)")
            if state is None and (p / "log.txt").is_file() and (p / "config.toml").is_file():
                raise TrainingError(f"{p} already holds a run: pass --resume {p} to continue it "
                                    "or choose another --out (nothing was changed)")
            if state is None and entries:
                shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
                raise TrainingError(f"--out {p} is not empty and not a pgolf run folder ({shown}): "
                                    "choose a new or empty folder (nothing was changed)")
        elif writer:
            try:
                p.mkdir(parents=True)
            except OSError as e:
                raise TrainingError(f"cannot create run folder {p}: {e.strerror}; choose a writable --out") from None
            created = True
        folder = cls(p, created, writer)
        folder.mark("new")
        return folder

    @classmethod
    def open_existing(cls, path: str | Path, writer: bool = True) -> "RunFolder":
        """A folder to resume: it must be ours and not finished."""
        p = Path(path)
        if not p.is_dir():
            raise TrainingError(f"--resume {p}: no such run folder; pass the --out of the run to continue")
        state = read_state(p)
        legacy = state is None and (p / "config.toml").is_file() and (p / "log.txt").is_file()
        if state is None and not legacy:
            raise TrainingError(f"--resume {p}: not a pgolf run folder (no {MARKER}); pass a run's --out folder")
        if state == "done" or (p / "metrics.json").is_file():
            raise TrainingError(f"--resume {p}: this run already finished (metrics.json exists); "
                                "start a new run with another --out (nothing was changed)")
        return cls(p, False, writer)

    def mark(self, state: str) -> None:
        if not self.writer:
            self.state = state
            return
        write_json_atomic(self.path / MARKER, {"format": 1, "state": state})
        self.state = state

    def discard_if_unstarted(self) -> bool:
        """After a failure: remove what a run that never stepped wrote. True if removed."""
        if not self.writer or self.state != "new":
            return False
        for name in SETUP_FILES:
            (self.path / name).unlink(missing_ok=True)
        if self.created and not any(self.path.iterdir()):
            shutil.rmtree(self.path, ignore_errors=True)
        return True
