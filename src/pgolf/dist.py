"""The only module that talks to torch.distributed.

Everything else receives a `Comm`: a single-process one whose collectives are no-ops, or a
process-group one (NCCL on GPUs, gloo on CPU) set up from torchrun's environment.
"""

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as tdist

from pgolf.hw import pick_device


class DoneHandle:
    """Handle of an operation that already completed (single process)."""

    def wait(self) -> None:
        return None


class Comm:
    """Single-process communicator: every collective is the identity."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.rank = 0
        self.world_size = 1
        self.local_rank = 0
        self.device = device or torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> None:
        return None

    def all_reduce_avg(self, t: torch.Tensor) -> None:
        return None

    def all_reduce_max(self, t: torch.Tensor) -> None:
        return None

    def reduce_scatter_avg_async(self, out: torch.Tensor, inp: torch.Tensor) -> DoneHandle:
        """out <- mean over ranks of this rank's slice of inp (inp dim 0 = world * out dim 0)."""
        out.copy_(inp)
        return DoneHandle()

    def all_gather_async(self, out: torch.Tensor, inp: torch.Tensor) -> DoneHandle:
        """out <- concatenation over ranks of inp along dim 0."""
        out.copy_(inp)
        return DoneHandle()

    def broadcast(self, t: torch.Tensor, src: int = 0) -> None:
        return None

    def barrier(self) -> None:
        return None

    def close(self) -> None:
        return None


class ProcessGroupComm(Comm):
    """Communicator over the default torch.distributed process group."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.rank = tdist.get_rank()
        self.world_size = tdist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    def all_reduce_sum(self, t: torch.Tensor) -> None:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)

    def all_reduce_avg(self, t: torch.Tensor) -> None:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        t.div_(self.world_size)

    def all_reduce_max(self, t: torch.Tensor) -> None:
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)

    # reduce_scatter_tensor / all_gather_into_tensor (NCCL and gloo alike) warn as deprecated
    # from torch 2.12 on, but their *_single successors are missing from the GPU's torch 2.11.

    def reduce_scatter_avg_async(self, out: torch.Tensor, inp: torch.Tensor):
        # SUM, then divide: NCCL's AVG would scale each input by 1/world before summing,
        # which rounds differently.
        return _AvgHandle(tdist.reduce_scatter_tensor(out, inp, op=tdist.ReduceOp.SUM,
                                                      async_op=True), out, self.world_size)

    def all_gather_async(self, out: torch.Tensor, inp: torch.Tensor):
        return tdist.all_gather_into_tensor(out, inp, async_op=True)

    def broadcast(self, t: torch.Tensor, src: int = 0) -> None:
        tdist.broadcast(t, src=src)

    def barrier(self) -> None:
        tdist.barrier()

    def close(self) -> None:
        """Leave the group; called from a `finally`, so it never hides the error in flight."""
        if not tdist.is_initialized():
            return
        # Leaving on an error (a collective timed out, a signal), the peer may be silent: a
        # barrier would wait on it, then raise over the run's one-line reason.
        if sys.exc_info()[0] is None:
            try:
                # A rank that tears down while a peer still talks to it aborts gloo
                # ("terminate called without an active exception"): leave together.
                tdist.barrier()
            except RuntimeError:
                pass  # nobody left to leave with
        # Destroyed even then: left to the interpreter's exit, gloo's threads were now and
        # then torn down unjoined, with that same abort (1 exit in 12 after a timeout).
        tdist.destroy_process_group()


class _AvgHandle:
    def __init__(self, work, out: torch.Tensor, world: int) -> None:
        self.work, self.out, self.world = work, out, world

    def wait(self) -> None:
        self.work.wait()
        self.out.div_(self.world)


def init_comm(requested_device: str = "auto", timeout_s: float = 600.0) -> Comm:
    """Comm for this process: a process group when launched by torchrun, else single.

    timeout_s bounds every collective: a rank whose peer died or stopped answering fails
    with an error instead of waiting forever. gloo applies the group's timeout to each
    operation; NCCL's watchdog aborts the process when an operation outlives it. A group
    that already exists (set up earlier, e.g. to prepare the embedded corpus) is given
    this timeout too: reused with its first one, the default 600 s, a silent peer held a
    run with run.collective_timeout_seconds=30 for minutes.
    """
    device = pick_device(requested_device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Comm(device)
    timeout = timedelta(seconds=timeout_s)
    if not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # The watchdog ends the process on a timeout (torch's default; a user's value wins).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
        tdist.init_process_group(backend=backend, timeout=timeout)
    else:
        tdist.distributed_c10d._set_pg_timeout(timeout)
    return ProcessGroupComm(device)
