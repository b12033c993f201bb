"""Newton–Schulz spectrum and single-process Muon math."""

import io
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _optim_helpers import MUON_SHAPES, TwinComm, make_muon_params, rank_grads  # noqa: E402

from pgolf.dist import Comm  # noqa: E402
from pgolf.optim.errors import OptimError  # noqa: E402
from pgolf.optim.muon import Muon, newton_schulz  # noqa: E402


def _spectrum_batch(b: int, m: int, n: int, cond: float, seed: int):
    """Matrices U diag(s) V^T with singular values log-spaced over `cond`, and their U V^T."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(b, m, k, generator=g))
    V, _ = torch.linalg.qr(torch.randn(b, n, k, generator=g))
    s = torch.logspace(0, -math.log10(cond), k).expand(b, k)
    return U @ torch.diag_embed(s) @ V.mT, U @ V.mT


@pytest.mark.parametrize("shape", [(1, 32, 32), (4, 48, 16), (3, 16, 48), (2, 64, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_newton_schulz_singular_values_in_band(shape, dtype):
    G, polar = _spectrum_batch(*shape, cond=100.0, seed=sum(shape))
    # Scales 1, 10, 100, ...: a batch-wide (not per-matrix) norm would leave the small ones tiny.
    G = G * torch.tensor([10.0 ** i for i in range(shape[0])]).view(-1, 1, 1)
    X = newton_schulz(G, steps=5, dtype=dtype)
    assert X.dtype == dtype and X.shape == G.shape
    sv = torch.linalg.svdvals(X.float())
    # Measured 0.67..1.20 for these spectra; the reference coefficients promise ~[0.7, 1.2].
    assert sv.min() > 0.6 and sv.max() < 1.25, (sv.min(), sv.max())
    cos = (X.float() * polar).sum((-2, -1)) / (X.float().norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
    assert cos.min() > 0.975  # same singular vectors as the exact polar factor


def test_newton_schulz_band_is_discriminating():
    G, _ = _spectrum_batch(2, 32, 32, cond=100.0, seed=1)
    few = torch.linalg.svdvals(newton_schulz(G, steps=2).float())
    assert few.min() < 0.6  # too few iterations leave small singular values behind
    wrong = G / G.norm(dim=(-2, -1), keepdim=True)
    assert torch.linalg.svdvals(wrong).min() < 0.05  # the input itself is far from the band


def test_newton_schulz_2d_matches_batched_and_rejects_vectors():
    G, _ = _spectrum_batch(3, 24, 12, cond=10.0, seed=7)
    batched = newton_schulz(G, dtype=torch.float32)
    for i in range(3):
        assert torch.allclose(newton_schulz(G[i], dtype=torch.float32), batched[i], atol=1e-5)
    with pytest.raises(OptimError):
        newton_schulz(torch.ones(5))


def _reference_muon(params, grads_per_step, schedule, wd, ns_dtype):
    """Plain per-matrix Muon: Nesterov momentum, NS, sqrt(max(1, r/c)) scale, decoupled wd."""
    params = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    for grads, (lr, mom) in zip(grads_per_step, schedule):
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g.to(torch.bfloat16).float()
            bufs[i] = bufs[i] * mom + g
            u = g + mom * bufs[i]
            mats = u.reshape(-1, p.shape[-2], p.shape[-1])
            upd = torch.stack([newton_schulz(m, dtype=ns_dtype) for m in mats]).float().reshape(p.shape)
            upd = upd * math.sqrt(max(1.0, p.shape[-2] / p.shape[-1]))
            params[i] = p * (1 - lr * wd) - lr * upd
    return params


@pytest.mark.parametrize("ns_dtype,atol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-3)])
def test_single_process_muon_matches_plain_math(ns_dtype, atol):
    """Per-matrix loop vs the banked shard path; bf16 only adds batched-matmul rounding."""
    schedule = [(0.05, 0.8), (0.04, 0.9), (0.03, 0.95)]
    grads = [[g * 0.37 for g in rank_grads(s, 0)] for s in range(3)]  # not bf16-exact
    params = make_muon_params()
    expected = _reference_muon(params, grads, schedule, wd=0.1, ns_dtype=ns_dtype)
    opt = Muon(params, lr=0.05, momentum=0.8, weight_decay=0.1, comm=Comm(), ns_dtype=ns_dtype)
    for step, (lr, mom) in enumerate(schedule):
        opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"] = lr, mom
        for p, g in zip(params, grads[step]):
            p.grad = g.clone()
        opt.step()
    for p, e in zip(params, expected):
        assert torch.allclose(p.detach(), e, atol=atol), (p - e).abs().max()
    # Momentum buffers are fp32 and cover the whole bank on one process.
    for p, shape in zip(params, MUON_SHAPES):
        buf = opt.state[p]["momentum_buffer"]
        assert buf.dtype == torch.float32 and buf.numel() == math.prod(shape)


def test_muon_update_scale_and_weight_decay_on_one_step():
    tall = torch.nn.Parameter(torch.zeros(40, 10))
    opt = Muon([tall], lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)
    g = torch.Generator().manual_seed(3)
    tall.grad = torch.randn(40, 10, generator=g)
    opt.step()
    sv = torch.linalg.svdvals(tall.detach() / -0.1)
    assert 0.6 * 2 < sv.min() and sv.max() < 1.25 * 2  # sqrt(40 / 10) = 2
    p = torch.nn.Parameter(torch.full((4, 4), 2.0))
    opt = Muon([p], lr=0.5, momentum=0.0, weight_decay=0.2)
    p.grad = torch.zeros(4, 4)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((4, 4), 2.0 * (1 - 0.5 * 0.2)))


def test_muon_state_dict_roundtrip_and_rank_check():
    params = make_muon_params()
    opt = Muon(params, lr=0.05, momentum=0.9, comm=Comm())
    for p, g in zip(params, rank_grads(0, 0)):
        p.grad = g
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    sd = torch.load(io.BytesIO(buf.getvalue()))
    bf16_params = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in params]
    fresh = Muon(bf16_params, lr=0.01, momentum=0.5)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["lr"] == 0.05 and fresh.param_groups[0]["momentum"] == 0.9
    for p, q in zip(params, bf16_params):
        # Loaded buffers stay fp32 even for bf16 params.
        assert fresh.state[q]["momentum_buffer"].dtype == torch.float32
        assert torch.equal(fresh.state[q]["momentum_buffer"], opt.state[p]["momentum_buffer"])
    sd["muon_rank"] = 1
    with pytest.raises(OptimError, match="rank 1"):
        fresh.load_state_dict(sd)


def test_muon_rejects_vectors():
    with pytest.raises(OptimError, match="AdamW"):
        Muon([torch.nn.Parameter(torch.ones(8))])


def _frozen_muon(params, grads_per_step, schedule, wd, nesterov, ns_dtype, reduce_dtype):
    """Muon at world 1 as first written (fresh padded/shard/gather buffers each step), op for op."""
    params = [p.detach().clone() for p in params]
    bufs = [None] * len(params)
    for grads, (lr, mom) in zip(grads_per_step, schedule):
        for i, (p, grad) in enumerate(zip(params, grads)):
            n, r, c = (1, *p.shape) if p.ndim == 2 else tuple(p.shape)
            full = torch.zeros(n, r, c, dtype=reduce_dtype)
            if grad is not None:
                full[:n].copy_(grad.reshape(n, r, c))
            shard = torch.empty(n, r, c, dtype=reduce_dtype)
            shard.copy_(full)
            g = shard.float()
            if bufs[i] is None:
                bufs[i] = torch.zeros_like(g)
            bufs[i].mul_(mom).add_(g)
            g = g.add(bufs[i], alpha=mom) if nesterov else bufs[i]
            update = newton_schulz(g, dtype=ns_dtype).mul_(math.sqrt(max(1.0, r / c)))
            gathered = torch.empty_like(update)
            gathered.copy_(update.contiguous())
            p.mul_(1.0 - lr * wd)
            p.add_(gathered[:n].reshape(p.shape).to(p.dtype), alpha=-lr)
    return params


@pytest.mark.parametrize("ns_dtype,reduce_dtype,nesterov,param_dtype", [
    (torch.bfloat16, torch.bfloat16, True, torch.float32),
    (torch.float32, torch.float32, False, torch.float32),
    (torch.float32, torch.bfloat16, True, torch.bfloat16),  # fp32 update rounded to bf16 params
    (torch.bfloat16, torch.float32, True, torch.bfloat16),
])
def test_muon_is_bit_identical_to_frozen_algorithm_across_resume(ns_dtype, reduce_dtype, nesterov,
                                                                 param_dtype):
    """Reused buffers change no bit: 5 steps (a missing grad, a state_dict resume) == frozen copy."""
    schedule = [(0.05, 0.8), (0.04, 0.9), (0.03, 0.95), (0.03, 0.95), (0.02, 0.9)]
    start = [p.detach().to(param_dtype) for p in make_muon_params()]
    grads = [[(g * 0.37).to(param_dtype) for g in rank_grads(s, 0)] for s in range(5)]  # not bf16-exact
    grads[2][1] = None
    expected = _frozen_muon(start, grads, schedule, 0.1, nesterov, ns_dtype, reduce_dtype)

    def make(params):
        return Muon(params, lr=0.05, momentum=0.8, nesterov=nesterov, weight_decay=0.1,
                    ns_dtype=ns_dtype, reduce_dtype=reduce_dtype)

    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = make(params)
    for step, (lr, mom) in enumerate(schedule):
        if step == 3:  # resume from a checkpoint into fresh params and a fresh optimizer
            blob = io.BytesIO()
            torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, blob)
            ckpt = torch.load(io.BytesIO(blob.getvalue()))
            assert all(set(st) == {"momentum_buffer"} for st in ckpt["opt"]["state"].values())
            params = [torch.nn.Parameter(p.clone()) for p in ckpt["params"]]
            opt = make(params)
            opt.load_state_dict(ckpt["opt"])
        opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"] = lr, mom
        for p, g in zip(params, grads[step]):
            p.grad = None if g is None else g.clone()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for p, e in zip(params, expected):
        assert p.dtype == param_dtype and torch.equal(p.detach(), e), (p - e).abs().max()


def test_collective_buffers_are_reused_with_zero_pad_rows():
    """Across steps every collective gets the same buffers; pad rows and a missing grad read as 0."""
    params = make_muon_params()
    comm = TwinComm()
    opt = Muon(params, lr=0.05, momentum=0.9, comm=comm)
    steps = []
    for step in range(3):
        grads = rank_grads(step, 0)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        if step == 1:
            params[0].grad = None
        done = len(comm.calls)
        opt.step()
        sent = [call[3] for call in comm.calls[done:] if call[0] == "reduce_scatter"]
        for p, g, padded in zip(params, grads, sorted(sent, key=lambda t: -t.numel())):
            n = math.prod(p.shape) // (p.shape[-2] * p.shape[-1])
            real = torch.zeros_like(g) if p.grad is None else g
            assert torch.equal(padded[:n].float().reshape(p.shape), real.bfloat16().float())
            assert padded[n:].abs().sum() == 0 and padded.shape[0] % 2 == 0
        steps.append(comm.storage()[done:])
    assert len(steps[0]) == 2 * len(params) and steps[0] == steps[1] == steps[2]
    assert all(set(st) == {"momentum_buffer"} for st in opt.state_dict()["state"].values())


@pytest.mark.slow
def test_compiled_newton_schulz_one_static_graph_per_shape():
    """compile_ns really compiles: one static graph per bank shape, reused, maths unchanged."""
    from torch._dynamo.exc import RecompileError
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    shapes = [(4, 64, 64), (4, 32, 64), (2, 128, 64), (2, 64, 128)]
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g) * 0.1) for s in shapes]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    # Two NS iterations: half the kernels of five for inductor to build, the same graph shape.
    eager = Muon(params, lr=0.1, momentum=0.9, backend_steps=2)
    compiled = Muon(twins, lr=0.1, momentum=0.9, backend_steps=2, compile_ns=True)
    # Below the 4 graphs needed: Muon must raise it, or shapes 2-4 would silently run eager.
    with torch._dynamo.config.patch(recompile_limit=1):
        for step in range(2):
            before = [(p.detach().clone(), q.detach().clone()) for p, q in zip(params, twins)]
            for p, q in zip(params, twins):
                p.grad = torch.randn(p.shape, generator=g)
                q.grad = p.grad.clone()
            eager.step()
            # The second pass must reuse the first pass's graphs.
            with torch._dynamo.config.patch(error_on_recompile=step == 1):
                compiled.step()
            for p, q, (p0, q0) in zip(params, twins, before):
                got, want = q.detach() - q0, p.detach() - p0
                # Eager rounds every NS intermediate to bf16, inductor fuses them in fp32: after
                # two iterations each sits ~0.5% (relative Frobenius) from the fp32 result.
                assert (got - want).norm() / want.norm() < 0.015
    assert counters["stats"]["unique_graphs"] == len(shapes)
    # A static graph serves its own shape only; a symbolic-shape graph would take this one too.
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(RecompileError):
        compiled._ns()(torch.randn(3, 64, 96), steps=2, dtype=torch.bfloat16)


def _singular_spread(X):
    s = torch.linalg.svdvals(X.float())
    return float(s.min()), float(s.max())


def test_polar_express_is_closer_to_orthogonal_than_the_quintic():
    from pgolf.optim.muon import newton_schulz
    torch.manual_seed(0)
    # A gradient-like matrix with a wide spectrum (rank-decaying), where 5 steps matter.
    G = torch.randn(64, 128) @ torch.diag(torch.logspace(0, -3, 128))
    lo_q, hi_q = _singular_spread(newton_schulz(G, dtype=torch.float32))
    lo_p, hi_p = _singular_spread(newton_schulz(G, dtype=torch.float32, coeffs="polar_express"))
    assert max(abs(1 - lo_p), abs(1 - hi_p)) < max(abs(1 - lo_q), abs(1 - hi_q))


def test_row_norm_makes_the_update_blind_to_row_scales():
    """MuonEq-R: scaling a row of the momentum does not change the orthogonalized update."""
    from pgolf.optim.muon import Muon
    torch.manual_seed(0)
    outs = []
    for scale in (1.0, 50.0):
        p = torch.nn.Parameter(torch.zeros(16, 32))
        opt = Muon([p], lr=1.0, momentum=0.0, nesterov=False, ns_dtype=torch.float32,
                   reduce_dtype=torch.float32, row_norm=True)
        g = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
        g[3] *= scale
        p.grad = g
        opt.step()
        outs.append(p.detach().clone())
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
