import pytest
import torch

from pgolf.quant.fake_quant import fake_quant_ste
from pgolf.quant.quantizers import (GPTQ_CLIP_QUANTILES, QuantError, dequantize_rows, gptq_lite_quantize, quant_qmax,
                                    quantize_rows, row_abs_quantiles)


def _w(rows=24, cols=96, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.distributions.StudentT(3.0).sample((rows, cols)) * 0.3
    return (w * torch.rand(rows, 1, generator=g) * scale).float()


def test_qmax_and_bad_bits():
    assert [quant_qmax(b) for b in (5, 6, 7, 8)] == [15, 31, 63, 127]
    with pytest.raises(QuantError, match="2..8"):
        quant_qmax(9)


def test_row_quantiles_match_torch_quantile():
    w = _w()
    qs = (0.5, 0.999, 0.9999, 1.0, 0.0)
    got = row_abs_quantiles(w, qs)
    want = torch.stack([torch.quantile(w.abs(), q, dim=1) for q in qs])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits", [5, 6, 7, 8])
def test_rowwise_error_bound_unclipped(bits):
    w = _w(seed=bits)
    q, s = quantize_rows(w, bits, clip_quantile=0.999)
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and s.shape == (w.shape[0],)
    qmax = quant_qmax(bits)
    assert int(q.abs().max()) <= qmax
    dq = dequantize_rows(q, s)
    sf = s.float()[:, None]
    inside = w.abs() <= qmax * sf  # values the grid covers (not clipped)
    assert inside.float().mean() > 0.95
    err = (w - dq).abs()
    assert bool((err[inside] <= sf.expand_as(w)[inside] / 2 * (1 + 1e-6)).all())
    # clipped values land on the outermost code
    assert bool((q[~inside].abs() == qmax).all())
    # scale floor 1/qmax, stored fp16
    assert float(s.float().min()) >= float(torch.tensor(1.0 / qmax).half())


def test_scale_floor_applies_to_small_rows():
    w = torch.full((2, 8), 0.001)
    q, s = quantize_rows(w, 6)
    assert float(s[0]) == float(torch.tensor(1 / 31).half())
    assert int(q.abs().max()) == 0


def test_clip_search_matches_brute_force():
    w = _w(rows=16, cols=200, seed=3)
    _, s_m, pick_m = gptq_lite_quantize(w, 6, "matrix")
    errs = []
    for qq in GPTQ_CLIP_QUANTILES:
        q, s = quantize_rows(w, 6, qq)
        errs.append(float((dequantize_rows(q, s) - w).pow(2).mean()))
    best = min(range(len(errs)), key=lambda i: (errs[i], i))
    assert pick_m.unique().tolist() == [best]
    qb, sb = quantize_rows(w, 6, GPTQ_CLIP_QUANTILES[best])
    assert torch.equal(s_m, sb)
    # per-row: each row gets its own best candidate
    _, s_r, pick_r = gptq_lite_quantize(w, 6, "row")
    for r in range(w.shape[0]):
        row_errs = []
        for qq in GPTQ_CLIP_QUANTILES:
            q, s = quantize_rows(w[r:r + 1], 6, qq)
            row_errs.append(float((dequantize_rows(q, s) - w[r:r + 1]).pow(2).sum()))
        assert row_errs[int(pick_r[r])] <= min(row_errs) * (1 + 1e-5)


@pytest.mark.parametrize("bits", [5, 6, 8])
def test_row_search_never_worse_than_matrix(bits):
    w = _w(rows=32, cols=128, seed=7, scale=4.0)
    out = {}
    for mode in ("matrix", "row"):
        q, s, _ = gptq_lite_quantize(w, bits, mode)
        out[mode] = float((dequantize_rows(q, s) - w).pow(2).sum())
    assert out["row"] <= out["matrix"] * (1 + 1e-6)


def test_gptq_beats_fixed_max_clip_on_heavy_tails():
    w = _w(rows=32, cols=512, seed=11, scale=6.0)
    q, s, _ = gptq_lite_quantize(w, 6, "matrix")
    q1, s1 = quantize_rows(w, 6, 1.0)
    e_g = float((dequantize_rows(q, s) - w).pow(2).mean())
    e_1 = float((dequantize_rows(q1, s1) - w).pow(2).mean())
    assert e_g <= e_1


def test_3d_banks_quantize_per_row():
    w = _w(rows=3 * 8, cols=32).reshape(3, 8, 32)
    q, s = quantize_rows(w, 6)
    assert q.shape == w.shape and s.shape == (24,)
    q2, s2 = quantize_rows(w[1], 6)
    assert torch.equal(q[1], q2) and torch.equal(s[8:16], s2)


@pytest.mark.parametrize("bits", [5, 6, 8])
def test_fake_quant_matches_artifact_grid(bits):
    w = _w(seed=bits)
    q, s = quantize_rows(w, bits, 1.0)
    torch.testing.assert_close(fake_quant_ste(w, bits), dequantize_rows(q, s), rtol=0, atol=0)
    bank = torch.stack([w, 0.5 * w])
    fq = fake_quant_ste(bank, bits)
    for i in range(2):
        qi, si = quantize_rows(bank[i], bits, 1.0)
        assert torch.equal(fq[i], dequantize_rows(qi, si))


def test_fake_quant_straight_through_gradient():
    w = _w().requires_grad_(True)
    g = torch.randn_like(w)
    (fake_quant_ste(w, 6) * g).sum().backward()
    assert torch.equal(w.grad, g)
    assert not torch.equal(fake_quant_ste(w.detach(), 6), w.detach())


def test_fake_quant_bf16_keeps_dtype():
    w = _w().bfloat16().requires_grad_(True)
    out = fake_quant_ste(w, 6)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
