"""Resumable checkpoints: one file per rank plus its predecessor (.prev), written atomically.

Files are read with torch.load(weights_only=True): tensors and plain containers only, so a
crafted checkpoint cannot run code. On resume the ranks agree on the newest step that every
one of them has, because a rank killed mid-write keeps only its older checkpoint and ranks
resumed at different steps would deadlock at the end of training.
"""

from pathlib import Path

import torch

from pgolf.atomic import atomic_write
from pgolf.dist import Comm
from pgolf.errors import TrainingError
from pgolf.runfolder import checkpoint_file

CKPT_FORMAT = 1


def _ckpt_prev(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def save_checkpoint(out_dir, rank, model, opt, loader, ema, swa, st, config_toml: str = "") -> None:
    """The newest complete checkpoint moves to .prev only once the new one is complete.
    `config_toml`: the run's config, so a resume can tell an edited config.toml."""
    path = checkpoint_file(out_dir, rank)
    blob = {"format": CKPT_FORMAT, "model": model.state_dict(), "opt": opt.state_dict(), "loader": loader.state(),
            "ema": ema.state_dict() if ema else None, "swa": swa.state_dict() if swa else None,
            "run": vars(st).copy(), "rng": torch.get_rng_state(), "config_toml": config_toml}
    # Temp files of writes cut short by a kill; only this rank writes these names.
    for stale in [*path.parent.glob(f".{path.name}.*.tmp"), path.with_name(path.name + ".tmp")]:
        stale.unlink(missing_ok=True)
    atomic_write(path, lambda f: torch.save(blob, f), keep_previous=_ckpt_prev(path))


def _ckpt_read(path: Path, mmap: bool = False) -> dict:
    blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    if not isinstance(blob, dict) or blob.get("format") != CKPT_FORMAT:
        raise ValueError("not a pgolf checkpoint")
    return blob


def _ckpt_probe(path: Path) -> int:
    """Step of a readable checkpoint, -1 when missing or unreadable. mmap: the tensors stay on disk."""
    if not path.exists():
        return -1
    for mmap in (True, False):  # a filesystem that cannot map files still gets read
        try:
            return int(_ckpt_read(path, mmap=mmap)["run"]["step"])
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same treatment
            error = e
    print(f"checkpoint {path} is unreadable ({type(error).__name__}); trying an older one", flush=True)
    return -1


def _ckpt_gather(comm: Comm, values: list[int]) -> list[list[int]]:
    """Every rank's `values`, as rows indexed by rank (an all-gather built from one sum)."""
    t = torch.zeros(comm.world_size, len(values), dtype=torch.int64, device=comm.device)
    t[comm.rank] = torch.tensor(values, dtype=torch.int64)
    comm.all_reduce_sum(t)
    return t.cpu().tolist()


def load_checkpoint(out_dir: str, rank: int, comm: Comm | None = None) -> dict:
    """The checkpoint of the newest step that every rank can read (its file or .prev).

    All ranks run the same collectives whatever they find, so they agree or all raise the
    same one-line TrainingError; nothing waits for the process-group timeout.
    """
    comm = comm or Comm()
    path = checkpoint_file(out_dir, rank)
    files = [path, _ckpt_prev(path)]
    steps = [_ckpt_probe(f) for f in files]
    table = _ckpt_gather(comm, steps)
    common = set(table[0]).intersection(*map(set, table[1:])) - {-1}
    failed: dict[int, list[int]] = {}
    for step in sorted(common, reverse=True):
        try:
            blob, ok = _ckpt_read(files[steps.index(step)]), 1
        except Exception as e:  # noqa: BLE001 - the probe passed; the tensor data did not
            print(f"checkpoint {files[steps.index(step)]} is unreadable ({type(e).__name__}); "
                  "trying an older one", flush=True)
            blob, ok = None, 0
        oks = [row[0] for row in _ckpt_gather(comm, [ok])]
        if all(oks):
            return blob
        failed[step] = [r for r, k in enumerate(oks) if not k]
    raise TrainingError(_ckpt_none_message(out_dir, table, failed, path.name))


def _ckpt_none_message(out_dir: str, table: list[list[int]], failed: dict[int, list[int]], name: str) -> str:
    fix = "start a new run with --out, the run folder is left untouched"
    if len(table) == 1:
        return f"no readable checkpoint in {out_dir} (looked for {name} and .prev): {fix}"
    have = "; ".join(f"rank {r}: {', '.join(str(s) for s in row if s >= 0) or 'none'}" for r, row in enumerate(table))
    torn = "".join(f"; step {s} unreadable on rank(s) {', '.join(map(str, rs))}" for s, rs in failed.items())
    return f"no readable checkpoint step common to all {len(table)} ranks in {out_dir} ({have}{torn}): {fix}"


def restore_checkpoint(blob, model, opt, loader, ema, swa, st, qat=None) -> None:
    try:
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["opt"])
    except (RuntimeError, ValueError, KeyError) as e:
        # A checkpoint of another model (a foreign file, or one older than config checks).
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TrainingError(f"the checkpoint does not fit this run's model ({first[:200]}): it comes from "
                            "another run or another architecture; resume the run that wrote it") from None
    loader.load_state(blob["loader"])
    if ema is not None and blob["ema"] is not None:
        ema.load_state_dict(blob["ema"])
    if swa is not None and blob["swa"] is not None:
        swa.load_state_dict(blob["swa"])
    vars(st).update(blob["run"])
    torch.set_rng_state(blob["rng"])
    if qat is not None:
        qat.active = st.qat_active
