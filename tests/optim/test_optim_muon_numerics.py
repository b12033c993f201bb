"""Muon's numerics switches (#1855's: plain-norm Polar Express input, bf16 momentum and NS norm,
clamped row norm) and the embedding's own AdamW weight decay."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _optim_helpers import FakeModel  # noqa: E402

from pgolf.config_tree import OptimConfig  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.optim.builder import build_optimizers  # noqa: E402
from pgolf.optim.muon import Muon, newton_schulz  # noqa: E402


def test_polar_express_input_norm_is_safety_times_frobenius():
    # Zero iterations return the normalized input itself.
    g = torch.Generator().manual_seed(0)
    G = torch.randn(3, 16, 24, generator=g)
    for safety in (1.0, 1.02):
        X = newton_schulz(G, steps=0, dtype=torch.float32, coeffs="polar_express", safety=safety)
        norms = X.norm(dim=(-2, -1))
        assert torch.allclose(norms, torch.full((3,), 1.0 / safety), rtol=1e-6), (safety, norms)


def test_bf16_norm_divides_by_a_bf16_number():
    g = torch.Generator().manual_seed(1)
    G = torch.randn(4, 32, 32, generator=g).to(torch.bfloat16)
    kw = dict(steps=0, dtype=torch.bfloat16, coeffs="polar_express", safety=1.0)
    plain = newton_schulz(G, norm_fp32=False, **kw)
    exact = newton_schulz(G, norm_fp32=True, **kw)
    # A power-of-two scale moves the bf16 norm exactly: the bf16 path is then bit-identical.
    assert torch.equal(newton_schulz(G * 8, norm_fp32=False, **kw), plain)
    # The norm's rounding shows in some of the 4 x 1024 entries; never by more than a few ulp.
    assert not torch.equal(plain, exact)
    rel = ((plain.float() - exact.float()).abs() / exact.float().abs().clamp_min(1e-3)).max()
    assert rel < 2 ** -6


def one_update(grad: torch.Tensor, **muon_kw) -> torch.Tensor:
    p = torch.nn.Parameter(torch.zeros_like(grad))
    opt = Muon([p], lr=1.0, momentum=0.0, nesterov=False, **muon_kw)
    p.grad = grad.clone()
    opt.step()
    return -p.detach().clone()


def test_clamped_row_norm_makes_the_update_blind_to_row_scales():
    g = torch.Generator().manual_seed(2)
    G = torch.randn(16, 32, generator=g)
    scales = 2.0 ** torch.tensor([-20.0] * 4 + [0.0] * 12)   # four rows with norms ~5e-6
    kw = dict(row_norm=True, coeffs="polar_express", ns_dtype=torch.float32)
    clamp = [one_update(G * s[:, None], row_norm_clamp=True, **kw) for s in (torch.ones(16), scales)]
    added = [one_update(G * s[:, None], row_norm_clamp=False, **kw) for s in (torch.ones(16), scales)]
    assert torch.equal(clamp[0], clamp[1])
    # + 1e-7 shrinks the small rows by a few percent before orthogonalizing.
    assert (added[0] - added[1]).abs().max() > 1e-3


def test_bf16_momentum_drops_what_bf16_cannot_hold():
    bufs = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        p = torch.nn.Parameter(torch.zeros(4, 4))
        opt = Muon([p], lr=0.0, momentum=0.5, momentum_dtype=dtype)
        for scale in (1.0, 2.0 ** -10):   # both exact in bf16; 0.5 + 2^-10 is not
            p.grad = torch.full((4, 4), scale)
            opt.step()
        bufs[name] = opt.state[p]["momentum_buffer"]
    assert bufs["bf16"].dtype == torch.bfloat16 and bufs["fp32"].dtype == torch.float32
    assert torch.equal(bufs["fp32"].reshape(4, 4), torch.full((4, 4), 0.5 + 2.0 ** -10))
    assert torch.equal(bufs["bf16"].float().reshape(4, 4), torch.full((4, 4), 0.5))


def test_bf16_momentum_survives_a_checkpoint():
    p = torch.nn.Parameter(torch.zeros(4, 4))
    opt = Muon([p], lr=0.01, momentum=0.5, momentum_dtype=torch.bfloat16)
    p.grad = torch.ones(4, 4)
    opt.step()
    opt2 = Muon([p], lr=0.01, momentum=0.5, momentum_dtype=torch.bfloat16)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state[p]["momentum_buffer"].dtype == torch.bfloat16


def test_builder_passes_the_muon_switches():
    ocfg = OptimConfig(muon_pe_safety=1.0, muon_momentum_dtype="bf16", muon_ns_norm_dtype="bf16",
                       muon_row_norm_eps="clamp")
    muon = build_optimizers(FakeModel(), ocfg, Comm()).muon
    assert (muon.pe_safety, muon.momentum_dtype, muon.ns_norm_fp32, muon.row_norm_clamp) == (
        1.0, torch.bfloat16, False, True)
    muon = build_optimizers(FakeModel(), OptimConfig(), Comm()).muon
    assert (muon.pe_safety, muon.momentum_dtype, muon.ns_norm_fp32, muon.row_norm_clamp) == (
        1.02, torch.float32, True, False)


@pytest.mark.parametrize("embed_wd, want_embed", [(0.085, 0.085), (None, 0.02)])
def test_embed_wd_decays_the_embedding_only(embed_wd, want_embed):
    ocfg = OptimConfig(tied_embed_lr=0.5, scalar_lr=0.5, adam_wd=0.02, embed_wd=embed_wd)
    model = FakeModel()
    opts = build_optimizers(model, ocfg, Comm())
    emb0, gain0 = model.tok_emb.weight.detach().clone(), model.gain.detach().clone()
    # Zero grads: Adam's step is 0, so one step is the decoupled decay alone.
    for p in opts.all_params():
        p.grad = torch.zeros_like(p)
    opts.adam.step()
    assert torch.allclose(model.tok_emb.weight, emb0 * (1 - 0.5 * want_embed), rtol=0, atol=1e-7)
    assert torch.allclose(model.gain, gain0 * (1 - 0.5 * 0.02), rtol=0, atol=1e-7)


def test_ema_scale_add_rounds_twice_and_agrees_with_lerp_to_rounding():
    from pgolf.optim.averaging import EMA
    g = torch.Generator().manual_seed(4)
    p = torch.nn.Parameter(torch.randn(256, generator=g))
    emas = {form: EMA([("w", p)], 0.9965, form) for form in ("lerp", "scale_add")}
    manual = p.detach().clone()
    for _ in range(50):
        with torch.no_grad():
            p.add_(0.01 * torch.randn(256, generator=g))
        for ema in emas.values():
            ema.update([("w", p)])
        manual.mul_(0.9965).add_(p.detach(), alpha=1.0 - 0.9965)
    assert torch.equal(emas["scale_add"].shadow["w"], manual)
    assert not torch.equal(emas["lerp"].shadow["w"], manual)
    assert torch.allclose(emas["lerp"].shadow["w"], manual, rtol=1e-5, atol=0)
