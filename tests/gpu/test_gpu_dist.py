"""A one-rank NCCL process group: ProcessGroupComm's collectives (the reduce_scatter_tensor /
all_gather_into_tensor calls of Parallel Muon) and the optimizer set running over it.

One GPU holds one NCCL rank, so this checks that NCCL accepts every call, dtype and layout and
that the optimizers run over a group; at one rank each collective is an identity, so it says
nothing about how ranks combine. That is tests/test_dist_collectives.py's job (two gloo ranks)
and tests/optim/test_optim_parallel.py's (Parallel Muon at 2 and 4 ranks)."""

import copy

import pytest
import torch
import torch.distributed as tdist
from _gpu_helpers import TINY_RECORD, filled_model, record_cfg

from pgolf.dist import Comm, ProcessGroupComm
from pgolf.optim.builder import build_optimizers

pytestmark = pytest.mark.gpu


def _collectives(comm: ProcessGroupComm, dev) -> dict:
    """Whether each collective ran and returned its input, bit for bit (what one rank must do)."""
    g = torch.Generator().manual_seed(0)
    # Muon's layout: a bf16 bank [n_pad, rows, cols] reduce-scattered, the bf16 update gathered.
    padded = torch.randn(6, 48, 32, generator=g).to(dev, torch.bfloat16)
    shard = torch.empty_like(padded)
    comm.reduce_scatter_avg_async(shard, padded).wait()
    gathered = torch.empty_like(padded)
    comm.all_gather_async(gathered, shard).wait()
    flat = torch.randn(1000, generator=g).to(dev)
    out = {"reduce_scatter": torch.equal(shard, padded), "all_gather": torch.equal(gathered, padded)}
    for name in ("all_reduce_sum", "all_reduce_avg", "all_reduce_max", "broadcast"):
        t = flat.clone()
        getattr(comm, name)(t)
        out[name] = torch.equal(t, flat)
    comm.barrier()
    return out


def test_one_rank_nccl_group_runs_the_collectives_and_steps_like_a_single_process(dev, tmp_path, report):
    backend = "nccl" if dev.type == "cuda" else "gloo"  # gloo only in the CPU logic check
    tdist.init_process_group(backend, init_method=f"file://{tmp_path / 'pg_store'}", rank=0, world_size=1)
    try:
        comm = ProcessGroupComm(dev)
        identities = _collectives(comm, dev)
        cfg = record_cfg(*TINY_RECORD, "optim.grad_clip_norm=0.3")
        single = filled_model(cfg, dev, sigma=0.1)
        grouped = copy.deepcopy(single)
        start = {k: v.clone() for k, v in single.state_dict().items()}
        opts = (build_optimizers(single, cfg.optim, Comm(dev)), build_optimizers(grouped, cfg.optim, comm))
        for step in range(3):
            gen = torch.Generator().manual_seed(100 + step)
            for pa, pb in zip(single.parameters(), grouped.parameters()):
                grad = (torch.randn(pa.shape, generator=gen) * 0.02).to(dev, pa.dtype)
                pa.grad, pb.grad = grad.clone(), grad.clone()
            for model, opt in zip((single, grouped), opts):
                opt.reduce_and_step(model, cfg.optim.grad_clip_norm, cfg.optim.grad_clip_mode)
        diffs = {n: float((a.detach().float() - b.detach().float()).abs().max())
                 for (n, a), b in zip(single.named_parameters(), grouped.parameters())}
        moved = min(float((p.detach().float() - start[n].float()).abs().max()) for n, p in single.named_parameters())
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
    report.record("process_group_world1", {"backend": backend, "identities": identities,
                                           "max_param_diff": max(diffs.values()), "min_param_moved": moved})
    assert all(identities.values()), identities
    assert moved > 0  # every parameter took a step
    # Exact: one rank's sum-reduce-scatter and all-gather are copies, and both optimizer sets
    # then run the same kernels on the same values in the same order.
    assert max(diffs.values()) == 0.0, {n: d for n, d in diffs.items() if d}
