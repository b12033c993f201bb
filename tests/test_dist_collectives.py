"""ProcessGroupComm's collectives at two ranks (gloo on CPU), where none is an identity."""

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2


def _rank_tensor(rank: int, n: int = 12) -> torch.Tensor:
    """Different on every rank, and neither rank's values dominate the other's everywhere."""
    g = torch.Generator().manual_seed(10 + rank)
    return torch.randn(n, generator=g)


def _rank_bank(rank: int) -> torch.Tensor:
    """Muon's layout: a bank [n_pad, rows, cols], n_pad a multiple of the world size."""
    g = torch.Generator().manual_seed(20 + rank)
    return torch.randn(4, 3, 5, generator=g)


def _worker(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as tdist

    from pgolf.dist import ProcessGroupComm
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    comm = ProcessGroupComm(torch.device("cpu"))
    out = {"rank": comm.rank, "world": comm.world_size}
    for name in ("all_reduce_sum", "all_reduce_avg", "all_reduce_max", "broadcast"):
        t = _rank_tensor(rank)
        getattr(comm, name)(t)
        out[name] = t
    t = _rank_tensor(rank)
    comm.broadcast(t, src=1)
    out["broadcast_from_1"] = t
    bank = _rank_bank(rank)
    k = bank.shape[0] // WORLD
    shard, gathered = torch.empty(k, 3, 5), torch.empty_like(bank)
    comm.reduce_scatter_avg_async(shard, bank).wait()
    comm.all_gather_async(gathered, bank[:k]).wait()
    out["reduce_scatter_avg"], out["all_gather"] = shard, gathered
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    comm.close()


@pytest.mark.multiproc
def test_two_rank_collectives_combine_both_ranks(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    got = [torch.load(Path(tmp_path) / f"rank{r}.pt") for r in range(WORLD)]
    t = [_rank_tensor(r) for r in range(WORLD)]
    banks = [_rank_bank(r) for r in range(WORLD)]
    k = banks[0].shape[0] // WORLD
    for r, res in enumerate(got):
        assert (res["rank"], res["world"]) == (r, WORLD)
        torch.testing.assert_close(res["all_reduce_sum"], t[0] + t[1], rtol=0, atol=1e-6)
        torch.testing.assert_close(res["all_reduce_avg"], (t[0] + t[1]) / 2, rtol=0, atol=1e-6)
        assert torch.equal(res["all_reduce_max"], torch.maximum(t[0], t[1]))
        assert torch.equal(res["broadcast"], t[0]) and torch.equal(res["broadcast_from_1"], t[1])
        # Each rank keeps the mean of its own slice of the banks, then gathers every rank's.
        torch.testing.assert_close(res["reduce_scatter_avg"], (banks[0] + banks[1])[r * k:(r + 1) * k] / 2,
                                   rtol=0, atol=1e-6)
        assert torch.equal(res["all_gather"], torch.cat([b[:k] for b in banks]))
    # None of these is an identity at two ranks: the inputs differ everywhere.
    assert not torch.equal(t[0] + t[1], t[1]) and not torch.equal(torch.maximum(t[0], t[1]), t[1])
    assert not torch.equal(torch.maximum(t[0], t[1]), t[0])
