"""Full GPTQ, clip rules and LQER against their plain counterparts."""

import pytest
import torch

from pgolf.quant.clip import choose_row_scales, sdclip_values, weighted_row_errors
from pgolf.quant.gptq import gptq_quantize
from pgolf.quant.lqer import lqer_correction, lqer_entries, lqer_factors, pick_lqer_targets
from pgolf.quant.quantizers import QuantError, dequantize_rows, quant_codes, quant_qmax


def _layer(rows=48, cols=64, n=512, seed=0):
    """A weight and a strongly correlated input batch: where GPTQ's error feedback matters."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols ** 0.5 + torch.eye(cols)
    x = torch.randn(n, cols, generator=g) @ mix * torch.linspace(0.2, 3.0, cols)
    w = torch.randn(rows, cols, generator=g) * 0.5  # trained block matrices have std ~0.3 (the 1/qmax scale floor stays out of the way)
    return w, x, x.T @ x / n


def _out_err(w, dq, x):
    return float((x @ (dq - w).T).pow(2).mean())


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("bits", [4, 6])
def test_gptq_beats_round_to_nearest_on_layer_output(bits, act_order):
    w, x, h = _layer(seed=bits)
    scale = choose_row_scales(w, bits, "quantile", quantiles=(1.0,))
    rtn = quant_codes(w, scale, quant_qmax(bits)) * scale[:, None]
    q = gptq_quantize(w, h, scale, bits, block_size=16, damp=0.01, act_order=act_order)
    assert q.dtype == torch.int8 and q.shape == w.shape and int(q.abs().max()) <= quant_qmax(bits)
    dq = dequantize_rows(q, scale.half())
    assert _out_err(w, dq, x) < (0.6 if act_order else 0.9) * _out_err(w, rtn, x)


def test_gptq_block_size_does_not_change_codes():
    w, _, h = _layer(cols=40)
    scale = choose_row_scales(w, 6, "sdclip", 12.85)
    a = gptq_quantize(w, h, scale, 6, block_size=7)
    b = gptq_quantize(w, h, scale, 6, block_size=128)
    assert (a != b).float().mean() < 0.01  # float64 either way: only rounding ties may differ


def test_gptq_identity_hessian_is_round_to_nearest():
    # With H = I no column informs another: GPTQ must reduce to plain rounding.
    w, _, _ = _layer()
    scale = choose_row_scales(w, 5, "quantile", quantiles=(1.0,))
    q = gptq_quantize(w, torch.eye(w.shape[1]), scale, 5, damp=1e-9, act_order=False)
    assert torch.equal(q.float(), quant_codes(w, scale, quant_qmax(5)))


def test_gptq_dead_columns_and_shape_errors():
    w, _, h = _layer(cols=32)
    h[:, 3] = 0
    h[3, :] = 0
    scale = choose_row_scales(w, 6, "quantile", quantiles=(1.0,))
    q = gptq_quantize(w, h, scale, 6)
    assert torch.equal(q[:, 3].float(), quant_codes(w, scale, 31)[:, 3])
    with pytest.raises(QuantError, match="Hessian"):
        gptq_quantize(w, torch.eye(5), scale, 6)


def test_sdclip_values_are_k_row_std():
    w, _, _ = _layer()
    torch.testing.assert_close(sdclip_values(w, 12.85), 12.85 * w.std(dim=1, unbiased=False))
    # Uniform Hessian weights are the plain std; a column the inputs never excite is ignored.
    torch.testing.assert_close(sdclip_values(w, 3.0, torch.ones(w.shape[1])), sdclip_values(w, 3.0))
    hd = torch.ones(w.shape[1])
    hd[0] = 0
    w2 = w.clone()
    w2[:, 0] = 100.0
    torch.testing.assert_close(sdclip_values(w2, 2.0, hd), sdclip_values(w[:, 1:], 2.0))
    with pytest.raises(QuantError):
        sdclip_values(w, 0.0)


def test_sdclip_scales_and_narrow_codes():
    w, _, _ = _layer()
    s = choose_row_scales(w, 6, "sdclip", 12.85)
    torch.testing.assert_close(s, (12.85 * w.std(dim=1, unbiased=False) / 31).half().float())
    # k x std far above the row max: codes use a narrow part of the grid, which is the point.
    assert int(quant_codes(w, s, 31).abs().max()) < 16


def test_hessian_weighted_search_minimizes_output_error():
    w, x, h = _layer(seed=3)
    qs = (0.9, 0.95, 0.99, 1.0)
    s_h = choose_row_scales(w, 4, "quantile", hessian=h, search="row", quantiles=qs)
    s_p = choose_row_scales(w, 4, "quantile", search="row", quantiles=qs)
    err = lambda w, h, s: float(weighted_row_errors(w, quant_codes(w, s, 7) * s[:, None], h).sum())
    assert err(w, h, s_h) <= err(w, h, s_p)
    # Strongly anisotropic inputs: a few large-weight columns carry nearly all the input energy.
    # |e|^2 clips those columns to spare the bulk; the Hessian-weighted search must keep them
    # (seeds 0-4 give ratios 0.39-0.62; a search that ignores H gives exactly 1).
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 64, generator=g) * 0.3
    w[:, :4] *= 8
    hd = torch.full((64,), 0.01)
    hd[:4] = 100.0
    h = torch.diag(hd)
    s_h = choose_row_scales(w, 4, "quantile", hessian=h, search="row", quantiles=qs)
    s_p = choose_row_scales(w, 4, "quantile", search="row", quantiles=qs)
    assert err(w, h, s_h) < 0.75 * err(w, h, s_p)


def test_lqer_reconstructs_the_error_it_was_fit_on():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(40, 3, generator=g) @ torch.randn(3, 56, generator=g)  # rank 3 exactly
    a, b = lqer_factors(e, 3)
    torch.testing.assert_close(a @ b, e, rtol=1e-4, atol=1e-4)
    full = torch.randn(40, 56, generator=g)
    a, b = lqer_factors(full, 4)
    s = torch.linalg.svdvals(full.double())
    assert abs(float((full - a @ b).pow(2).sum()) - float(s[4:].pow(2).sum())) < 1e-3
    ents = lqer_entries("w", full, 4, 8)
    corr = lqer_correction(ents, "w")
    assert float((full - corr).pow(2).sum()) < 1.01 * float(s[4:].pow(2).sum()) + 0.01 * float(full.pow(2).sum())
    assert ents["w.lqer_a"]["q"].shape == (4, 40) and ents["w.lqer_b"]["q"].shape == (4, 56)


def test_lqer_targets_top_k():
    assert pick_lqer_targets({"a": 1.0, "b": 3.0, "c": 2.0, "d": 0.0}, 2) == ["b", "c"]
    assert pick_lqer_targets({"a": 0.0}, 3) == []


def test_new_rules_drop_the_reference_scale_floor():
    from pgolf.quant.quantizers import QUANT_FP16_TINY
    w = _layer()[0] * 0.01  # std 0.005: 12.85 std / 31 is far under the reference's 1/31 floor
    legacy = choose_row_scales(w, 6, "sdclip", 12.85)
    new = choose_row_scales(w, 6, "sdclip", 12.85, floor=QUANT_FP16_TINY)
    assert torch.all(legacy == torch.tensor(1 / 31).half().float())
    torch.testing.assert_close(new, (12.85 * w.std(dim=1, unbiased=False) / 31).half().float())


def test_group_bits_and_policy_scales():
    from pgolf.config_tree import QuantConfig
    from pgolf.quant.policy import group_bits, quantize_state_dict, tensor_group
    q = QuantConfig(matrix_bits=6, embed_bits=8, attn_bits=5, ve_bits=16)
    assert [group_bits(q, g) for g in ("attn", "mlp", "matrix", "embed", "bigram", "ve")] == [5, 6, 6, 8, 8, 16]
    assert tensor_group("blocks.3.attn.proj.weight", "matrix") == "attn"
    assert tensor_group("ve.embed.weight", "embed") == "ve"
    sd = {"blocks.0.attn.c_q.weight": _layer(32, 32)[0], "ve.embed.weight": _layer(64, 16)[0]}
    payload, _ = quantize_state_dict(sd, QuantConfig(small_numel=16, matrix_bits=6, attn_bits=5, ve_bits=16,
                                                     matrix_method="gptq_lite", clip_rule="sdclip"))
    assert payload["blocks.0.attn.c_q.weight"]["bits"] == 5 and payload["ve.embed.weight"]["kind"] == "fp16"
    assert payload["blocks.0.attn.c_q.weight"]["method"] == "rtn_sdclip"
