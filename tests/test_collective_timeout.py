"""Hardware faults as one-line errors: a peer that stops answering (after
run.collective_timeout_seconds, also when the group was set up earlier with another
timeout), a rank blocked in a collective that gets SIGTERM (ended by the watchdog, no
SIGKILL needed), a CUDA request on a build without CUDA."""

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


# Two ranks as plain subprocesses (hard timeouts: a regression fails the test, never hangs
# it). The group is first set up with the default timeout, as `pgolf train` does when it
# prepares the embedded corpus, then the run asks for its own; rank 1 then stops itself.
_SILENT_PEER = """
import os, signal, sys, time
import torch
from pgolf.dist import init_comm
from pgolf.run import collective_timeout_error
init_comm("cpu")
comm = init_comm("cpu", 3.0)
comm.all_reduce_sum(torch.ones(1))
if comm.rank == 1:
    os.kill(os.getpid(), signal.SIGSTOP)
t0 = time.monotonic()
try:
    try:
        comm.all_reduce_max(torch.ones(1))
    finally:
        comm.close()
except RuntimeError as e:
    err = collective_timeout_error(e, comm.rank, comm.world_size, 3.0)
    print(f"{time.monotonic() - t0:.1f}|{e.__context__ is None}|{err}", flush=True)
    sys.exit(1)
"""


def start_ranks(source: str, tmp_path, world: int = 2) -> list:
    import socket
    import subprocess
    import sys
    script = tmp_path / "rank.py"
    script.write_text(source)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    procs = []
    for rank in range(world):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGOLF_")}
        env.update(PYTHONPATH=src, OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


@pytest.mark.slow
@pytest.mark.multiproc
def test_a_stopped_peer_ends_the_run_after_the_run_timeout_not_the_first_one(tmp_path):
    procs = start_ranks(_SILENT_PEER, tmp_path)
    try:
        out, err = procs[0].communicate(timeout=90)  # the first group's 600 s would fail here
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 1, err
    seconds, own_error, message = out.strip().split("|", 2)
    assert float(seconds) < 30  # 10x the 3 s timeout
    assert own_error == "True"  # close() raised nothing over the collective's own error
    assert "collective_timeout_seconds=3:" in message and "another rank died or hangs" in message


# Rank 0 waits in a collective (a 120 s timeout) on a stopped peer: only the C-level signal
# handler runs there, so a Python handler alone never saw torchrun's SIGTERM.
_BLOCKED_RANK = """
import os, signal, time
import torch
from pgolf.dist import init_comm
from pgolf.interrupts import stop_on_signals
comm = init_comm("cpu", 120.0)
comm.all_reduce_sum(torch.ones(1))
if comm.rank == 1:
    os.kill(os.getpid(), signal.SIGSTOP)
with stop_on_signals("the run folder", grace_s=2):
    print("waiting", flush=True)
    comm.all_reduce_max(torch.ones(1))
"""


@pytest.mark.slow
@pytest.mark.multiproc
def test_sigterm_ends_a_rank_blocked_in_a_collective_without_sigkill(tmp_path):
    procs = start_ranks(_BLOCKED_RANK, tmp_path)
    try:
        assert procs[0].stdout.readline() == "waiting\n"
        time.sleep(1)  # inside the C++ wait by now
        t0 = time.monotonic()
        procs[0].terminate()
        _, err = procs[0].communicate(timeout=60)  # unfixed, it waited out the 120 s timeout
        seconds = time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 128 + 15, err
    assert seconds < 20  # 10x the 2 s grace, far under the timeout and torchrun's 30 s before SIGKILL
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM; still blocked 2 s later"), err
