"""Checkpoints survive what interrupts them: a full disk leaves the previous one whole, and
ranks resume from the newest step all of them have, or all fail at once in one line."""

import errno
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from pgolf.atomic import AtomicWriteError, atomic_write
from pgolf.checkpoint import load_checkpoint, save_checkpoint
from pgolf.runfolder import checkpoint_file
from pgolf.dist import Comm
from pgolf.errors import TrainingError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _faults import full_disk_after  # noqa: E402




# ---------------------------------------------------------------- the atomic writer

def test_atomic_write_replaces_keeps_previous_and_refuses_clobber(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    atomic_write(p, lambda f: f.write(b"one"))
    atomic_write(p, lambda f: f.write(b"two"), keep_previous=tmp_path / "sub" / "f.bin.prev")
    assert p.read_bytes() == b"two" and (tmp_path / "sub" / "f.bin.prev").read_bytes() == b"one"
    with pytest.raises(FileExistsError):
        atomic_write(p, lambda f: f.write(b"three"), overwrite=False)
    assert p.read_bytes() == b"two" and oct(p.stat().st_mode & 0o777) == "0o644"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.bin", "f.bin.prev"]


@pytest.mark.parametrize("exc", [ValueError("not a disk problem"), KeyboardInterrupt()])
def test_atomic_write_passes_other_errors_through_and_removes_the_temp(tmp_path, exc):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def boom(f):
        f.write(b"partial")
        raise exc
    with pytest.raises(type(exc)):
        atomic_write(p, boom)
    assert p.read_bytes() == b"old" and [x.name for x in tmp_path.iterdir()] == ["f.bin"]


@pytest.mark.parametrize("code, says", [(errno.ENOSPC, "no space left on device"),
                                        (errno.EACCES, "permission denied"),
                                        (errno.EIO, "Input/output error")])
def test_atomic_write_names_the_path_in_one_line(tmp_path, code, says):
    p = tmp_path / "f.bin"

    def fail(f):
        raise OSError(code, os.strerror(code))
    with pytest.raises(AtomicWriteError, match=f"^cannot write {p}: {says}") as e:
        atomic_write(p, fail)
    assert "\n" not in str(e.value) and e.value.errno == code and e.value.path == str(p)
    assert not list(tmp_path.iterdir())


def test_atomic_write_sees_through_torch_save_wrapping(tmp_path, monkeypatch):
    """torch.save reports a failed write as an opaque RuntimeError; the OSError behind it counts."""
    monkeypatch.setattr("pgolf.atomic._atomic_open", full_disk_after(100))
    with pytest.raises(AtomicWriteError, match="no space left on device"):
        atomic_write(tmp_path / "t.pt", lambda f: torch.save({"x": torch.zeros(10_000)}, f))
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- checkpoints on one rank

class _Opt:
    def __init__(self, step: int) -> None:
        self.step = step

    def state_dict(self) -> dict:
        return {"muon": {"state": {}, "param_groups": []}, "adam": {"t": torch.tensor(self.step)}}


def _save(out, rank: int, step: int) -> None:
    model = torch.nn.Linear(4, 4)
    with torch.no_grad():
        model.weight.fill_(step)
    loader = SimpleNamespace(state=lambda: {"shard_index": 0, "position": step, "epoch": 0, "num_shards": 1})
    st = SimpleNamespace(step=step, train_ms=10.0 * step, last_finite_loss=1.0, qat_active=False)
    save_checkpoint(str(out), rank, model, _Opt(step), loader, None, None, st)


def _tear(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def test_disk_full_checkpoint_keeps_newest_and_prev(tmp_path, monkeypatch):
    _save(tmp_path, 0, 4)
    _save(tmp_path, 0, 8)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr("pgolf.atomic._atomic_open", full_disk_after(4096))
    path = checkpoint_file(str(tmp_path), 0)
    with pytest.raises(AtomicWriteError, match=f"^cannot write {path}: no space left on device") as e:
        _save(tmp_path, 0, 12)
    assert "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_checkpoint(str(tmp_path), 0)["run"]["step"] == 8


def test_stale_temp_files_of_a_killed_save_are_cleared(tmp_path):
    _save(tmp_path, 0, 4)
    (tmp_path / ".ckpt_rank0.pt.abc123.tmp").write_bytes(b"x" * 1000)  # a kill mid-write
    (tmp_path / ".ckpt_rank1.pt.abc123.tmp").write_bytes(b"x")  # another rank's: not ours to touch
    _save(tmp_path, 0, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt_rank1.pt.abc123.tmp", "ckpt_rank0.pt",
                                                          "ckpt_rank0.pt.prev"]


def test_single_rank_falls_back_to_prev_and_fails_in_one_line(tmp_path):
    _save(tmp_path, 0, 4)
    _save(tmp_path, 0, 8)
    _tear(tmp_path / "ckpt_rank0.pt")
    blob = load_checkpoint(str(tmp_path), 0)
    assert blob["run"]["step"] == 4 and blob["loader"]["position"] == 4
    torch.save({"format": 99, "run": {"step": 4}}, tmp_path / "ckpt_rank0.pt.prev")
    with pytest.raises(TrainingError, match=r"^no readable checkpoint in .* \(looked for ckpt_rank0.pt and .prev\)"):
        load_checkpoint(str(tmp_path), 0)


class _PeerComm(Comm):
    """Rank 0 of 2 in one process: each all-reduce adds the absent peer's scripted row."""

    def __init__(self, peer_rows: list[list[int]]) -> None:
        super().__init__()
        self.world_size = 2
        self.peer_rows = list(peer_rows)

    def all_reduce_sum(self, t: torch.Tensor) -> None:
        t[1] += torch.tensor(self.peer_rows.pop(0))


@pytest.mark.parametrize("peer, want", [
    ([[8, 4]], 8),  # peer lost step 12: both fall back to 8
    ([[12, 8]], 12),
    ([[12, 8], [0]], 8),  # peer's step-12 file passed the probe but not the full read
    ([[-1, 8]], 8),  # peer's newest is torn
])
def test_ranks_agree_on_the_newest_common_step(tmp_path, peer, want):
    _save(tmp_path, 0, 8)
    _save(tmp_path, 0, 12)
    comm = _PeerComm(peer + [[1]] * 2)
    blob = load_checkpoint(str(tmp_path), 0, comm)
    assert blob["run"]["step"] == want and blob["opt"]["adam"]["t"].item() == want


def test_no_common_step_names_every_rank(tmp_path):
    _save(tmp_path, 0, 8)
    _save(tmp_path, 0, 12)
    with pytest.raises(TrainingError) as e:
        load_checkpoint(str(tmp_path), 0, _PeerComm([[4, -1]]))
    assert str(e.value) == (f"no readable checkpoint step common to all 2 ranks in {tmp_path} "
                            "(rank 0: 12, 8; rank 1: 4): start a new run with --out, the run folder is left untouched")


# ---------------------------------------------------------------- two real processes

def _agree_worker(rank: int, store: str, root: str) -> None:
    """Spawned twice: each rank resumes two prepared run folders over gloo."""
    import torch.distributed as tdist

    from pgolf.dist import ProcessGroupComm
    torch.set_num_threads(1)
    # A disagreement must fail the test in a minute, not hang it for the default 30.
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                             timeout=timedelta(seconds=60))
    comm = ProcessGroupComm(torch.device("cpu"))
    results = {}
    for case in ("common", "none"):
        t0 = time.perf_counter()
        try:
            blob = load_checkpoint(os.path.join(root, case), rank, comm)
            results[case] = {"step": blob["run"]["step"], "weight": blob["model"]["weight"][0, 0].item()}
        except TrainingError as e:
            results[case] = {"error": str(e)}
        results[case]["seconds"] = time.perf_counter() - t0
    with open(os.path.join(root, f"result{rank}.json"), "w") as f:
        json.dump(results, f)
    tdist.barrier()
    tdist.destroy_process_group()


@pytest.mark.multiproc
def test_two_gloo_ranks_resume_the_same_step_or_fail_together(tmp_path):
    common, none = tmp_path / "common", tmp_path / "none"
    for step in (8, 12):
        _save(common, 0, step)
        _save(none, 0, step)
    _save(common, 1, 8)
    _save(common, 1, 12)
    _tear(common / "ckpt_rank1.pt")  # rank 1 was killed writing step 12
    _save(none, 1, 4)
    _save(none, 1, 12)
    _tear(none / "ckpt_rank1.pt")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_resume as spawnable  # children import the worker by this plain module name
    mp.spawn(spawnable._agree_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1))
    assert r0["common"]["step"] == r1["common"]["step"] == 8
    assert r0["common"]["weight"] == r1["common"]["weight"] == 8.0  # rank 0 read its .prev
    assert r0["none"]["error"] == r1["none"]["error"]
    assert r0["none"]["error"] == (f"no readable checkpoint step common to all 2 ranks in {none} "
                                   "(rank 0: 12, 8; rank 1: 4): start a new run with --out, "
                                   "the run folder is left untouched")
    assert max(r["none"]["seconds"] for r in (r0, r1)) < 10


def test_checkpoints_of_earlier_versions_still_resume(tmp_path):
    """Before the atomic writer, torch.save wrote straight to the path: same format, same reader."""
    blob = {"format": 1, "model": {"w": torch.ones(2)}, "opt": {}, "loader": {}, "ema": None, "swa": None,
            "run": {"step": 6, "train_ms": 1.0, "last_finite_loss": 2.0, "qat_active": False},
            "rng": torch.get_rng_state()}
    torch.save(blob, tmp_path / "ckpt_rank0.pt")
    got = load_checkpoint(str(tmp_path), 0)
    assert got["run"]["step"] == 6 and torch.equal(got["rng"], blob["rng"])
