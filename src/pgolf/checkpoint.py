"""Resumable checkpoints: one file per rank, written atomically, with a fallback to the
previous one when the newest is torn."""

import os
from pathlib import Path

import torch

from pgolf.errors import TrainingError


def checkpoint_path(out_dir: str, rank: int) -> Path:
    return Path(out_dir) / f"ckpt_rank{rank}.pt"


def save_checkpoint(out_dir, rank, model, opt, loader, ema, swa, st) -> None:
    """Atomic: the previous good checkpoint is replaced only by a complete new one."""
    path = checkpoint_path(out_dir, rank)
    blob = {"format": 1, "model": model.state_dict(), "opt": opt.state_dict(), "loader": loader.state(),
            "ema": ema.state_dict() if ema else None, "swa": swa.state_dict() if swa else None,
            "run": vars(st).copy(), "rng": torch.get_rng_state()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    os.replace(tmp, path)


def load_checkpoint(out_dir: str, rank: int) -> dict:
    path = checkpoint_path(out_dir, rank)
    for candidate in (path, path.with_name(path.name + ".prev")):
        if not candidate.exists():
            continue
        try:
            blob = torch.load(candidate, map_location="cpu", weights_only=False)
            if blob.get("format") == 1:
                return blob
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
            print(f"checkpoint {candidate} is unreadable ({type(e).__name__}); trying an older one")
    raise TrainingError(f"no readable checkpoint in {out_dir} (looked for {path.name} and .prev): "
                        "start a new run with --out, the run folder is left untouched")


def restore_checkpoint(blob, model, opt, loader, ema, swa, st, qat=None) -> None:
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["opt"])
    loader.load_state(blob["loader"])
    if ema is not None and blob["ema"] is not None:
        ema.load_state_dict(blob["ema"])
    if swa is not None and blob["swa"] is not None:
        swa.load_state_dict(blob["swa"])
    vars(st).update(blob["run"])
    torch.set_rng_state(blob["rng"])
    if qat is not None:
        qat.active = st.qat_active
