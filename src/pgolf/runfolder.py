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

import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgolf.atomic import atomic_write
from pgolf.config import (MACHINE_FIELDS, apply_sets, config_differences, config_from_toml, config_hash,
                          config_to_toml, finalize_config, read_config_file, set_value, shippable_config)
from pgolf.config_tree import Config
from pgolf.errors import RunFolderError, TrainingError
from pgolf.model.gpt import GPT, count_params
from pgolf.quant.artifact import read_artifact_header, write_artifact
from pgolf.runlog import write_json_atomic, write_text_atomic

MARKER = ".pgolf-run"
LOCK = ".pgolf-run.lock"
RUN_LOG, RUN_CONFIG, RUN_METRICS = "log.txt", "config.toml", "metrics.json"
RUN_ARTIFACT, RUN_FINAL_STATE, RUN_PLOTS = "model.ptz", "final_state.pt", "plots"
# What a run writes before its first step; removed again when it fails that early.
SETUP_FILES = (RUN_LOG, RUN_CONFIG, MARKER, LOCK)
# What a config read from a file (an artifact's, a run's) may ask to build: a 16 MB artifact
# holds far fewer parameters, so anything above is a damaged or hostile file, refused before
# a single tensor is allocated.
FILE_CONFIG_CAPS = {"params": 1 << 28, "seq_len": 1 << 17, "batch_tokens": 1 << 24}
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
        try:
            str(p).encode("utf-8")
        except UnicodeEncodeError:  # the log, the config and the metrics name the folder in UTF-8
            raise TrainingError(f"--out {ascii(str(p))} is not valid UTF-8: choose a folder name in UTF-8 "
                                "(nothing was changed)") from None
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
        if writer:
            folder.refuse_links()
            folder.lock()
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
        folder = cls(p, False, writer)
        if writer:
            folder.refuse_links()
            folder.lock()
        return folder

    def refuse_links(self) -> None:
        """pgolf never writes through a link: one inside the folder could point anywhere."""
        links = sorted(e.name for e in self.path.iterdir() if e.is_symlink())
        if links:
            raise TrainingError(f"{self.path / links[0]} is a symbolic link: pgolf writes only real files in a run "
                                "folder; replace it with a real file or folder, or choose another --out "
                                "(nothing was changed)")

    def lock(self) -> None:
        """One run per folder: an exclusive lock, held until release() or the process ends."""
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise TrainingError(f"cannot lock run folder {self.path}: {e.strerror}; choose a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise TrainingError(f"{self.path} is in use by another pgolf run (pid {holder}): wait for it to end "
                                "or choose another --out (nothing was changed)") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def release(self) -> None:
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            os.close(fd)

    def mark(self, state: str) -> None:
        if not self.writer:
            self.state = state
            return
        write_json_atomic(self.path / MARKER, {"format": 1, "state": state})
        self.state = state

    def discard_if_unstarted(self) -> bool:
        """After a failure: remove what a run that never stepped wrote. True if removed."""
        if not self.writer or self.state != "new":
            self.release()
            return False
        self.release()
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

    def remove_checkpoints(self, rank: int) -> None:
        """A finished run's checkpoints (each rank its own): they only serve --resume."""
        ckpt = self.checkpoint(rank)
        for path in (ckpt, ckpt.with_name(ckpt.name + ".prev")):
            path.unlink(missing_ok=True)

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
    notes: list[str]  # what the reader decided that the user should know (one line each)

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


def check_file_config(cfg: Config, source: str | Path) -> None:
    """Refuse a config read from a file that asks for more than any real run needs."""
    with torch.device("meta"):  # counts parameters without allocating them
        params = count_params(GPT(cfg.model))
    asks = {"params": params, "seq_len": max(cfg.run.train_seq_len, cfg.eval.seq_len),
            "batch_tokens": max(cfg.run.train_batch_tokens, cfg.eval.batch_tokens)}
    over = [f"{k} {v:,} > {FILE_CONFIG_CAPS[k]:,}" for k, v in asks.items() if v > FILE_CONFIG_CAPS[k]]
    if over:
        raise RunFolderError(f"{source}: its config asks for {'; '.join(over)}, beyond any run pgolf makes: "
                             "the file is damaged or not from pgolf (nothing was built)")


def _with_machine_fields(cfg: Config, local: Config) -> Config:
    """`cfg` with this machine's paths taken from `local` (where the data lives now)."""
    for key in MACHINE_FIELDS:
        sec, name = key.split(".")
        set_value(cfg, key, getattr(getattr(local, sec), name))
    return cfg


def _config_of(folder: Path | None, artifact: Path | None) -> tuple[Config, list[str]]:
    """The run's config.toml, checked against the artifact's hash; else the artifact's own.
    Returns (config, notes): a note says which fields of config.toml the artifact overrides."""
    cfg_file = folder / RUN_CONFIG if folder else None
    if cfg_file is not None and cfg_file.is_file():
        cfg = read_config_file(cfg_file)
        header = read_artifact_header(artifact) if artifact else {}
        theirs = header.get("config_hash")
        # The artifact's hash is of the config text at export: the file as written, or (for a
        # run resumed under newer code that added fields) the file as re-read.
        written = hashlib.sha256(cfg_file.read_bytes()).hexdigest()[:16]
        if not theirs or theirs in (config_hash(cfg), written):
            return cfg, []
        text = (header.get("meta") or {}).get("config_toml")
        if not text:  # an artifact without its config: nothing to score it with but config.toml
            raise RunFolderError(f"{artifact}: config hash {theirs} does not match {cfg_file} ({config_hash(cfg)}); "
                                 "the artifact comes from another run: keep each run folder together")
        # config.toml was edited (data moved) or belongs to another run: the artifact's own
        # config describes its weights, config.toml says where the data lives now.
        own = config_from_toml(text)
        fields = config_differences(shippable_config(cfg), own)
        differ = ", ".join(fields) if fields else "only this machine's paths"
        return _with_machine_fields(own, cfg), [f"{cfg_file} differs from the artifact's own config ({differ}): "
                                                "scoring with the artifact's config and config.toml's paths"]
    if artifact is None:
        raise RunFolderError(f"{folder}: no {RUN_CONFIG} and no {RUN_ARTIFACT}; pass the folder pgolf train --out wrote")
    text = (read_artifact_header(artifact).get("meta") or {}).get("config_toml")
    if not text:
        raise RunFolderError(f"{artifact}: no {RUN_CONFIG} beside it and none inside; keep the run folder together")
    return config_from_toml(text), []


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
    cfg, notes = _config_of(folder, artifact)
    if sets:
        apply_sets(cfg, list(sets))
        finalize_config(cfg)
    check_file_config(cfg, artifact or folder / RUN_CONFIG)
    metrics = read_metrics(folder / RUN_METRICS) if folder and (folder / RUN_METRICS).is_file() else None
    log = folder / RUN_LOG if folder and (folder / RUN_LOG).is_file() else None
    return RunView(cfg, folder, artifact, metrics, log, notes)
