"""Shared fakes and spawn workers for the optim tests (importable by spawned children)."""

import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from pgolf.dist import Comm, DoneHandle
from pgolf.optim.muon import Muon

VOCAB, DIM = 16, 8
# n = 5 and 3 are not multiples of 2 or 4: the padding path is always exercised.
MUON_SHAPES = [(5, 8, 6), (3, 6, 10), (12, 7)]


class FakeModel(torch.nn.Module):
    """Tiny model with the three param lists the optimizer builder relies on."""

    def __init__(self, seed: int = 0, tie: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.cfg = SimpleNamespace(tie_embeddings=tie)
        self.tok_emb = torch.nn.Embedding(VOCAB, DIM)
        with torch.no_grad():
            self.tok_emb.weight.copy_(torch.randn(VOCAB, DIM, generator=g) * 0.5)
        self.bank = torch.nn.Parameter(torch.randn(3, DIM, DIM, generator=g) * 0.3)
        self.up = torch.nn.Parameter(torch.randn(2 * DIM, DIM, generator=g) * 0.3)
        self.gain = torch.nn.Parameter(torch.ones(DIM))
        if not tie:
            self.lm_head = torch.nn.Linear(DIM, VOCAB, bias=False)
        self.register_buffer("offset", torch.zeros(DIM))

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(ids) + self.offset
        for i in range(self.bank.shape[0]):
            x = x + torch.tanh(x @ self.bank[i].T)
        x = x + 0.5 * F.relu(x @ self.up.T) @ self.up
        x = x * self.gain
        head = self.tok_emb.weight if self.cfg.tie_embeddings else self.lm_head.weight
        logits = x @ head.T
        return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))

    def matrix_params(self) -> list:
        return [self.bank, self.up]

    def embedding_params(self) -> list:
        return [self.tok_emb.weight]

    def scalar_params(self) -> list:
        return [self.gain]


class TwinComm(Comm):
    """Rank 0 of 2 in one process: the absent twin sends what this rank sends, plus 2 in all-reduces.

    Keeps every tensor a collective got (so no new buffer can reuse a freed one's address)
    and a copy of each reduce-scatter input.
    """

    def __init__(self) -> None:
        super().__init__()
        self.world_size = 2
        self.calls: list[tuple] = []

    def all_reduce_avg(self, t: torch.Tensor) -> None:
        self.calls.append(("all_reduce", t))
        t.add_(1.0)  # mean of t and t + 2

    def reduce_scatter_avg_async(self, out: torch.Tensor, inp: torch.Tensor) -> DoneHandle:
        self.calls.append(("reduce_scatter", out, inp, inp.clone()))
        out.copy_(inp[:out.shape[0]])
        return DoneHandle()

    def all_gather_async(self, out: torch.Tensor, inp: torch.Tensor) -> DoneHandle:
        self.calls.append(("all_gather", out))
        out.copy_(torch.cat([inp, inp]))
        return DoneHandle()

    def storage(self) -> list[tuple]:
        """(kind, data_ptr of each buffer) per call so far."""
        return [(c[0], *(t.data_ptr() for t in c[1:3])) for c in self.calls]


def batch_for_step(step: int, rows: int = 8, seq: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, VOCAB, (rows, seq + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def make_muon_params(seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g) * 0.2) for s in MUON_SHAPES]


def rank_grads(step: int, rank: int) -> list:
    """Per-rank grads on a 1/16 grid: their bf16 casts, sums and means over <= 4 ranks are exact."""
    g = torch.Generator().manual_seed(10_000 * step + rank)
    return [torch.randint(-8, 9, s, generator=g).float() / 16 for s in MUON_SHAPES]


MUON_SCHEDULE = [(0.05, 0.8), (0.04, 0.9), (0.03, 0.95)]  # (lr, momentum) per step


def run_muon_steps(params: list, comm, grads_for_step) -> None:
    opt = Muon(params, lr=0.05, momentum=0.8, weight_decay=0.1, comm=comm)
    for step, (lr, mom) in enumerate(MUON_SCHEDULE):
        for group in opt.param_groups:
            group["lr"], group["momentum"] = lr, mom
        for p, gr in zip(params, grads_for_step(step)):
            p.grad = gr.clone()
        if step != 1:  # step 1 lets step() launch the reduce-scatter itself
            opt.launch_reduce_scatter()
        opt.step()
        opt.zero_grad(set_to_none=True)


COMM_DTYPES = (torch.float32, torch.bfloat16)


def rank_bank(rank: int, dtype: torch.dtype) -> torch.Tensor:
    """[8, 3, 5] of multiples of 1/8 in [-1, 1]: bf16-exact, as are sums and means over <= 4 ranks."""
    g = torch.Generator().manual_seed(77 + rank)
    return (torch.randint(-8, 9, (8, 3, 5), generator=g).float() / 8).to(dtype)


def collective_results(comm) -> dict:
    """ProcessGroupComm's reduce-scatter (mean) and all-gather on 3-D banks, both in flight at once."""
    out = {}
    for dtype in COMM_DTYPES:
        inp = rank_bank(comm.rank, dtype)
        k = inp.shape[0] // comm.world_size
        shard, gathered = torch.empty(k, 3, 5, dtype=dtype), torch.empty_like(inp)
        handles = [comm.reduce_scatter_avg_async(shard, inp), comm.all_gather_async(gathered, inp[:k])]
        for h in handles:
            h.wait()
        out[f"reduce_scatter_{dtype}"], out[f"all_gather_{dtype}"] = shard, gathered
    return out


def _init_group(rank: int, world: int, store: str):
    import torch.distributed as tdist

    from pgolf.dist import ProcessGroupComm
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    return ProcessGroupComm(torch.device("cpu"))


def parallel_worker(rank: int, store_dir: str, out_dir: str) -> None:
    """Spawned with 4 processes: a world-4 Muon run, then ranks 0-1 form a world-2 group.

    One spawn serves both worlds because each child pays ~3 s importing torch and dynamo.
    """
    import torch.distributed as tdist
    torch.manual_seed(0)
    torch.set_num_threads(1)  # 4 children share 2 cores in CI
    for world in (4, 2):
        if rank >= world:
            return
        comm = _init_group(rank, world, os.path.join(store_dir, f"store{world}"))
        torch.save(collective_results(comm), os.path.join(out_dir, f"comm_w{world}_r{rank}.pt"))
        params = make_muon_params()
        run_muon_steps(params, comm, lambda step: rank_grads(step, rank))
        torch.save([p.detach() for p in params], os.path.join(out_dir, f"muon_w{world}_r{rank}.pt"))
        if world == 2:
            model = optimizer_set_run(comm, rank, world)
            sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
            torch.save(sd, os.path.join(out_dir, f"set_w{world}_r{rank}.pt"))
        tdist.barrier()
        comm.close()


def optimizer_set_run(comm, rank: int, world: int, steps: int = 3) -> FakeModel:
    """Each rank trains on its row slice of the step's batch; returns the model."""
    from pgolf.config_tree import OptimConfig
    from pgolf.optim.builder import build_optimizers
    model = FakeModel(seed=3)
    ocfg = OptimConfig(grad_clip_norm=0.5, grad_clip_mode="global", muon_wd=0.05, adam_wd=0.01)
    opts = build_optimizers(model, ocfg, comm)
    # fp32 collectives and Newton–Schulz: the equality check can then be tight; the bf16
    # path is covered exactly by the grid-valued grads of parallel_muon_worker.
    opts.muon.reduce_dtype = opts.muon.ns_dtype = torch.float32
    for step in range(steps):
        ids, tgt = batch_for_step(step)
        rows = ids.shape[0] // world
        loss = model(ids[rank * rows:(rank + 1) * rows], tgt[rank * rows:(rank + 1) * rows])
        loss.backward()
        opts.set_lr_multiplier(1.0 - 0.2 * step)
        opts.set_muon_momentum(0.85 + 0.05 * step)
        opts.reduce_and_step(model, ocfg.grad_clip_norm, ocfg.grad_clip_mode)
    return model
