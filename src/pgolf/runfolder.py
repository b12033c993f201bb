"""Run folders: the one owner of a run's files, for writing and for reading.

Every file a run writes is named here (RunFolder's paths) and written by the main rank
through RunFolder's writers; every command that reads a run or an artifact goes through
`open_run`, which returns the config (checked against the artifact's hash), the artifact,
the metrics and the log.

A run folder carries a marker, `.pgolf-run` (JSON: format, state), written before anything
else. pgolf writes only into a folder that is empty or carries its marker, so `--out`
pointed at a user's own files never overwrites them. States: "new" (set up, no training
step yet), "training", "done". A run that fails while "new" has produced nothing worth
keeping: its files are removed (and the folder, when this run created it), so a retry
with the same `--out` just works.
"""

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgolf.atomic import atomic_write
from pgolf.config import apply_sets, config_from_toml, config_hash, config_to_toml, finalize_config, read_config_file
from pgolf.config_tree import Config
from pgolf.errors import RunFolderError, TrainingError
from pgolf.quant.artifact import read_artifact_header, write_artifact
from pgolf.runlog import write_json_atomic, write_text_atomic

MARKER = ".pgolf-run"
RUN_LOG, RUN_CONFIG, RUN_METRICS = "log.txt", "config.toml", "metrics.json"
RUN_ARTIFACT, RUN_FINAL_STATE, RUN_PLOTS = "model.ptz", "final_state.pt", "plots"
# What a run writes before its first step; removed again when it fails that early.
SETUP_FILES = (RUN_LOG, RUN_CONFIG, MARKER)
# What each run file is for, when a command needs one that is missing.
RUN_FILE_HINTS = {
    RUN_ARTIFACT: "pass a finished run's folder or a .ptz artifact (pgolf train writes it after training)",
    RUN_METRICS: "pgolf train writes it when the run has finished its evaluation",
    RUN_LOG: "pass the folder pgolf train --out wrote",
    RUN_CONFIG: "pass the folder pgolf train --out wrote",
    RUN_FINAL_STATE: "pgolf train writes it at export, before quantizing",
}


def checkpoint_file(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"ckpt_rank{rank}.pt"


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

    log = property(lambda self: self.path / RUN_LOG)
    config = property(lambda self: self.path / RUN_CONFIG)
    metrics = property(lambda self: self.path / RUN_METRICS)
    artifact = property(lambda self: self.path / RUN_ARTIFACT)
    final_state = property(lambda self: self.path / RUN_FINAL_STATE)
    plots = property(lambda self: self.path / RUN_PLOTS)

    def checkpoint(self, rank: int) -> Path:
        return checkpoint_file(self.path, rank)

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
            if state is None and (p / RUN_LOG).is_file() and (p / RUN_CONFIG).is_file():
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
        legacy = state is None and (p / RUN_CONFIG).is_file() and (p / RUN_LOG).is_file()
        if state is None and not legacy:
            raise TrainingError(f"--resume {p}: not a pgolf run folder (no {MARKER}); pass a run's --out folder")
        if state == "done" or (p / RUN_METRICS).is_file():
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

    # Writers: the main rank writes, the other ranks' calls do nothing, so callers need not
    # know the world.

    def write_config(self, cfg: Config) -> None:
        if self.writer:
            write_text_atomic(self.config, config_to_toml(cfg))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.writer:
            write_json_atomic(self.metrics, metrics)

    def write_final_state(self, flat: dict[str, torch.Tensor]) -> None:
        if self.writer:
            atomic_write(self.final_state, lambda f: torch.save(flat, f))

    def write_artifact(self, blob: bytes) -> None:
        if self.writer:
            write_artifact(self.artifact, blob, overwrite=True)


# ---------------------------------------------------------------- the reader

@dataclass
class RunView:
    """What a command reads from a run folder or a lone artifact (None: not there)."""

    config: Config
    folder: Path | None
    artifact: Path | None
    metrics: dict[str, Any] | None
    log: Path | None

    @property
    def final_state(self) -> Path | None:
        p = self.folder / RUN_FINAL_STATE if self.folder else None
        return p if p is not None and p.is_file() else None


def run_file(folder: str | Path, name: str) -> Path:
    """`folder`/`name`, which must be a file (RUN_* names): else the one-line error saying what writes it."""
    path = Path(folder) / name
    if not path.is_file():
        raise RunFolderError(f"{folder}: missing {name}; {RUN_FILE_HINTS[name]}")
    return path


def read_metrics(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # bad JSON, or bytes that are not UTF-8
        raise RunFolderError(f"{path}: not valid JSON ({e}); re-run the run's evaluation (pgolf eval)") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object of metrics; re-run the run's evaluation")
    return data


def _config_of(folder: Path | None, artifact: Path | None) -> Config:
    """The run's config.toml, checked against the artifact's hash; else the artifact's own."""
    cfg_file = folder / RUN_CONFIG if folder else None
    if cfg_file is not None and cfg_file.is_file():
        cfg = read_config_file(cfg_file)
        theirs = read_artifact_header(artifact).get("config_hash") if artifact else None
        # The artifact's hash is of the config text at export: the file as written, or (for a
        # run resumed under newer code that added fields) the file as re-read.
        written = hashlib.sha256(cfg_file.read_bytes()).hexdigest()[:16]
        if theirs and theirs not in (config_hash(cfg), written):
            # Scoring an artifact with another run's config gives a meaningless number.
            raise RunFolderError(f"{artifact}: config hash {theirs} does not match {cfg_file} ({config_hash(cfg)}); "
                                 "the artifact comes from another run: keep each run folder together")
        return cfg
    if artifact is None:
        raise RunFolderError(f"{folder}: no {RUN_CONFIG} and no {RUN_ARTIFACT}; pass the folder pgolf train --out wrote")
    text = (read_artifact_header(artifact).get("meta") or {}).get("config_toml")
    if not text:
        raise RunFolderError(f"{artifact}: no {RUN_CONFIG} beside it and none inside; keep the run folder together")
    return config_from_toml(text)


def open_run(target: str | Path, sets: list[str] | tuple[str, ...] = (),
             needs: tuple[str, ...] = (RUN_ARTIFACT,)) -> RunView:
    """Read a run folder, or an artifact file (with the config.toml beside it, when there is
    one, else the config inside it). `needs`: run files that must be present (RUN_* names);
    `sets`: `--set` overrides applied on top of the run's config."""
    p = Path(target)
    if p.is_dir():
        folder, artifact = p, p / RUN_ARTIFACT
    elif p.is_file():
        folder, artifact = (p.parent if (p.parent / RUN_CONFIG).is_file() else None), p
        needs = tuple(n for n in needs if n != RUN_ARTIFACT)
    else:
        raise RunFolderError(f"{target}: not found; pass a run folder (pgolf train --out) or a .ptz artifact")
    for name in needs:
        run_file(folder if folder is not None else p, name)
    artifact = artifact if artifact.is_file() else None
    cfg = _config_of(folder, artifact)
    if sets:
        apply_sets(cfg, list(sets))
        finalize_config(cfg)
    metrics = read_metrics(folder / RUN_METRICS) if folder and (folder / RUN_METRICS).is_file() else None
    log = folder / RUN_LOG if folder and (folder / RUN_LOG).is_file() else None
    return RunView(cfg, folder, artifact, metrics, log)
