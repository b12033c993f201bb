"""Hardware faults as one-line errors: a peer that stops answering (after
run.collective_timeout_seconds), a CUDA request on a build without CUDA."""

import os
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pgolf.errors import TrainingError
from pgolf.run import collective_timeout_error


def _worker(rank: int, store: str, out: str) -> None:
    from datetime import timedelta

    import torch.distributed as tdist
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                             timeout=timedelta(seconds=2))
    if rank == 0:
        from pgolf.dist import ProcessGroupComm
        comm = ProcessGroupComm(torch.device("cpu"))
        t0 = time.time()
        try:
            comm.all_reduce_max(torch.ones(1))
            msg = "no error"
        except RuntimeError as e:
            err = collective_timeout_error(e, 0, 2, 2.0)
            msg = f"{time.time() - t0:.1f}|{err}"
        Path(out).write_text(msg)
    else:
        time.sleep(6)  # a peer that never joins the collective
    os._exit(0)


@pytest.mark.multiproc
def test_a_silent_peer_fails_the_rank_after_the_timeout(tmp_path):
    out = tmp_path / "rank0.txt"
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    seconds, message = out.read_text().split("|", 1)
    assert float(seconds) < 5  # the timeout, not the peer's 6 s
    assert "collective_timeout_seconds=2" in message and "\n" not in message


def test_other_runtime_errors_are_not_mistaken_for_a_timeout():
    assert collective_timeout_error(RuntimeError("CUDA out of memory"), 0, 2, 60) is None
    assert collective_timeout_error(RuntimeError("Timed out waiting 3000ms"), 0, 1, 60) is None  # one process
    assert isinstance(collective_timeout_error(RuntimeError("Watchdog caught collective operation timeout"),
                                               1, 8, 60), TrainingError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the request is valid here")
def test_cuda_request_without_cuda_is_one_line():
    from pgolf.errors import PgolfError
    from pgolf.hw import pick_device
    with pytest.raises(PgolfError, match="run.device=cuda") as e:
        pick_device("cuda")
    assert "\n" not in str(e.value)
