"""Record #1855's quantization switches: LQER formats that correct, per-group SDClip k, the
unbiased std, the record's GPTQ numerics, int8 gate rows, embedding GPTQ on the head's
Hessian, and artifacts that carry all of it."""

import hashlib
import json
import zlib

import pytest
import torch

from pgolf.config import resolve_config
from pgolf.config_tree import QuantConfig
from pgolf.model.gpt import GPT
from pgolf.quant.artifact import (_ART_PREFIX, ARTIFACT_MAGIC, ArtifactError, build_artifact, serialize_payload,
                                  unpack_artifact)
from pgolf.quant.calibration import HEAD_HESSIAN_NAME, collect_hessians
from pgolf.quant.clip import choose_row_scales, sdclip_values
from pgolf.quant.gptq import gptq_quantize
from pgolf.quant.lqer import lqer_correction, lqer_entries
from pgolf.quant.policy import dequantize_entry, dequantize_state_dict, quantize_state_dict, sdclip_k
from pgolf.quant.quantizers import QuantError

FORMATS = ("pgolf", "sym", "asym")


def _mat(rows, cols, seed, std=0.03):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * std * (0.5 + torch.rand(rows, 1, generator=g))


def _lowrank(rows, cols, rank, seed, size=1e-3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, rank, generator=g) @ torch.randn(rank, cols, generator=g) * size


@pytest.mark.parametrize("fmt", FORMATS)
def test_lqer_corrects_a_low_rank_residual(fmt):
    # A quantization residual of int6 matrices is ~1e-3: every format must take most of a
    # rank-2 one away (the old 1/qmax-floored factors stored all zeros and took none).
    err = _lowrank(128, 192, 2, seed=1)
    ents = lqer_entries("w", err, 4, 4, fmt, 64)
    ents["w"] = {"shape": [128, 192]}
    left = float((err - lqer_correction(ents, "w")).norm())
    # asym's A has four levels ([-2, 1]): it keeps less of the correction, by design
    assert left < (0.75 if fmt == "asym" else 0.5) * float(err.norm())


def test_lqer_policy_lowers_each_targets_error():
    sd = {f"blocks.0.mlp.{n}.weight": _mat(96, 64, seed=i) + _lowrank(96, 64, 3, seed=10 + i, size=3e-3)
          for i, n in enumerate(("fc", "proj", "gate"))}
    for fmt in FORMATS:
        q = QuantConfig(matrix_bits=5, matrix_method="gptq_lite", clip_rule="sdclip", small_numel=16,
                        lqer_rank=4, lqer_top_k=2, lqer_format=fmt)
        payload, _ = quantize_state_dict(sd, q)
        corrected = [n for n in sd if n + ".lqer_a" in payload]
        assert len(corrected) == 2
        dq = dequantize_state_dict(payload)
        for n in corrected:
            before = float((sd[n] - dequantize_entry(payload[n])).norm())
            assert float((sd[n] - dq[n]).norm()) < before


def test_asym_pack_codes_scales_and_round_trip():
    err = _mat(96, 128, seed=3, std=1e-3)
    ents = lqer_entries("w", err, 4, 4, "asym", 64)
    ea, eb = ents["w.lqer_a"], ents["w.lqer_b"]
    assert ea["method"] == eb["method"] == "lqer_asym"
    assert ea["q"].shape == (1, 96 * 4) and ea["scale"].shape == (1,)
    assert eb["q"].shape == (4 * 128 // 64, 64) and eb["scale"].shape == (8,)
    assert -2 <= int(ea["q"].min()) and int(ea["q"].max()) <= 1
    assert -8 <= int(eb["q"].min()) and int(eb["q"].max()) <= 7
    u, s, vh = torch.linalg.svd(err, full_matrices=False)
    a, b = u[:, :4] * s[:4], vh[:4]
    sa = (a.abs().max() / 1.5).half()
    assert ea["scale"].dtype == torch.float16 and ea["scale"][0] == sa
    groups = b.reshape(-1, 64)
    torch.testing.assert_close(eb["scale"], (groups.abs().amax(dim=1) / 7.5).half(), rtol=1e-3, atol=0)
    # every entry is within half a step of its code (the clamped top code included, give or
    # take the fp16 rounding of the scale)
    ahat = ea["q"].float().reshape(96, 4) * sa.float()
    bhat = eb["q"].float() * eb["scale"].float()[:, None]
    assert float((ahat - a).abs().max()) <= 0.51 * float(sa)
    assert bool(((bhat - groups).abs() <= 0.51 * eb["scale"].float()[:, None]).all())
    ents["w"] = {"shape": [96, 128]}
    torch.testing.assert_close(lqer_correction(ents, "w"), ahat @ bhat.reshape(4, 128))


def test_asym_falls_back_to_rows_when_the_group_does_not_divide():
    ents = lqer_entries("w", _mat(40, 50, seed=4, std=1e-3), 4, 4, "asym", 64)  # 4 x 50 = 200
    assert ents["w.lqer_a"]["method"] == "lqer_sym" and ents["w.lqer_a"]["q"].shape == (40, 4)
    assert int(ents["w.lqer_b"]["q"].abs().max()) <= 7


def test_lqer_factors_that_do_not_fit_are_refused():
    ents = lqer_entries("w", _mat(64, 64, seed=5, std=1e-3), 4, 4, "asym", 64)
    ents["w"] = {"shape": [64, 128]}
    with pytest.raises(QuantError, match="do not fit"):
        lqer_correction(ents, "w")


def test_group_k_and_fallback():
    q = QuantConfig(sdclip_k_matrix=12.85, sdclip_k_attn=13.0, sdclip_k_mlp=11.5, sdclip_k_embed=14.0)
    assert [sdclip_k(q, g) for g in ("attn", "mlp", "matrix", "embed")] == [13.0, 11.5, 12.85, 14.0]
    assert [sdclip_k(QuantConfig(), g) for g in ("attn", "mlp", "matrix")] == [12.85] * 3
    sd = {"blocks.0.attn.c_q.weight": _mat(32, 48, 0), "blocks.0.mlp.fc.weight": _mat(32, 48, 1),
          "bigram.proj.weight": _mat(32, 48, 2)}
    cfg = QuantConfig(matrix_bits=6, matrix_method="gptq_lite", clip_rule="sdclip", small_numel=16,
                      sdclip_k_attn=13.0, sdclip_k_mlp=11.5)
    payload, _ = quantize_state_dict(sd, cfg)
    for name, k in zip(sd, (13.0, 11.5, 12.85)):
        want = choose_row_scales(sd[name], 6, "sdclip", k, floor=2.0 ** -14).half()
        assert torch.equal(payload[name]["scale"], want), name


def test_unbiased_sdclip_std():
    w = _mat(16, 40, 6)
    torch.testing.assert_close(sdclip_values(w, 2.0, unbiased=True), 2.0 * w.std(dim=1))
    torch.testing.assert_close(sdclip_values(w, 2.0, torch.ones(40), unbiased=True), 2.0 * w.std(dim=1))
    assert bool((sdclip_values(w, 2.0, unbiased=True) > sdclip_values(w, 2.0)).all())


def _layer(rows=48, cols=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, cols, generator=g) @ (torch.randn(cols, cols, generator=g) / cols ** 0.5 + torch.eye(cols))
    return torch.randn(rows, cols, generator=g) * 0.05, x.T @ x / 512


def test_record_numerics_zero_dead_columns_and_agree_elsewhere():
    w, h = _layer()
    h[:, 5] = 0
    h[5, :] = 0
    s = choose_row_scales(w, 6, "sdclip", 12.85, floor=2.0 ** -14)
    rec = gptq_quantize(w, h, s, 6, numerics="record")
    w2 = w.clone()
    w2[:, 5] = 9.0  # a dead column's weights are ignored by the record's sweep...
    assert torch.equal(gptq_quantize(w2, h, s, 6, numerics="record"), rec)
    own = gptq_quantize(w2, h, s, 6)  # ...while pgolf rounds them
    assert int(own[:, 5].abs().min()) == 31
    live = torch.ones(64, dtype=torch.bool)
    live[5] = False
    assert float((gptq_quantize(w, h, s, 6)[:, live] == rec[:, live]).float().mean()) > 0.99
    with pytest.raises(QuantError, match="numerics"):
        gptq_quantize(w, h, s, 6, numerics="fp8")


def test_gate_int8_rows():
    g = torch.Generator().manual_seed(7)
    gate = torch.randn(8, 12, generator=g) * 0.05
    gate[3] = 0
    sd = {"blocks.0.attn.attn_gate_w": gate, "blocks.1.attn.attn_gate_w": torch.randn(2, 8, generator=g),
          "blocks.0.attn.q_gain": torch.randn(8, generator=g)}
    off, _ = quantize_state_dict(sd, QuantConfig())
    assert off["blocks.0.attn.attn_gate_w"]["kind"] == "fp16"
    on, _ = quantize_state_dict(sd, QuantConfig(gate_int8=True))
    e = on["blocks.0.attn.attn_gate_w"]
    assert e["kind"] == "int" and e["method"] == "gate_int8" and e["group"] == "gate"
    assert int(e["q"].abs().max()) == 127 and e["q"].dtype == torch.int8
    assert torch.equal(e["scale"], (gate.abs().amax(dim=1).clamp_min(1e-10) / 127).half())
    dq = dequantize_state_dict(on)["blocks.0.attn.attn_gate_w"]
    assert bool(((dq - gate).abs() <= 0.5001 * e["scale"].float()[:, None]).all()) and bool((dq[3] == 0).all())
    # 16 elements (< 32) and 1-D tensors keep fp16
    assert on["blocks.1.attn.attn_gate_w"]["kind"] == "fp16" and on["blocks.0.attn.q_gain"]["kind"] == "fp16"


def _tiny_model():
    cfg = resolve_config("smoke", env={}, sets=["model.num_layers=2", "model.model_dim=64", "model.num_heads=2",
                                                 "model.num_kv_heads=1", "model.vocab_size=128"])[0]
    torch.manual_seed(0)
    m = GPT(cfg.model, banked=False)
    with torch.no_grad():
        for p in m.matrix_params():
            p.normal_(0, 0.3)
        m.tok_emb.weight.normal_(0, 0.05)
    return cfg, m.eval()


def test_embed_gptq_on_the_head_hessian_lowers_the_head_output_error():
    cfg, m = _tiny_model()
    toks = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(1))
    hs = collect_hessians(m, toks, 8, "cpu", with_head=True)
    with torch.no_grad():
        hidden = m.forward_hidden(toks).reshape(-1, 64)
    w = m.tok_emb.weight.detach()
    sd = {"tok_emb.weight": w}
    base = dict(embed_bits=5, matrix_method="gptq", clip_rule="sdclip", sdclip_k_embed=14.0, small_numel=16)
    errs = {}
    for on in (False, True):
        payload, _ = quantize_state_dict(sd, QuantConfig(gptq_embed=on, **base), hs)
        assert payload["tok_emb.weight"]["method"] == ("gptq_sdclip" if on else "rtn_sdclip")
        e = dequantize_entry(payload["tok_emb.weight"]) - w
        errs[on] = float((hidden @ e.T).pow(2).mean())
    assert HEAD_HESSIAN_NAME == "tok_emb.weight" and errs[True] < 0.8 * errs[False]


def _rich_sd():
    sd = {f"blocks.0.mlp.{n}.weight": _mat(64, 128, seed=i) for i, n in enumerate(("fc", "proj"))}
    sd["blocks.0.attn.c_q.weight"] = _mat(48, 50, seed=3)  # 4 x 50 factors: asym falls back to rows
    sd["tok_emb.weight"] = _mat(96, 64, seed=4, std=0.01)
    sd["blocks.0.attn.attn_gate_w"] = _mat(4, 12, seed=5)
    return sd


@pytest.mark.parametrize("layout", ["bytes", "packed"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_artifact_round_trip_with_lqer_and_gate(fmt, layout):
    q = QuantConfig(matrix_bits=6, embed_bits=7, matrix_method="gptq_lite", clip_rule="sdclip", small_numel=16,
                    lqer_rank=4, lqer_top_k=4, lqer_format=fmt, gate_int8=True, compressor="lzma", level=6)
    sd = _rich_sd()
    out = {}
    blob, _ = build_artifact(sd, q, int_layout=layout, payload_out=out)
    got, header = unpack_artifact(blob)
    want = dequantize_state_dict(out)
    assert set(got) == set(sd) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    methods = {m["method"] for m in header["manifest"]}
    assert {"gate_int8", {"pgolf": "lqer", "sym": "lqer_sym", "asym": "lqer_asym"}[fmt]} <= methods


def test_artifact_with_misfit_factors_is_refused():
    q = QuantConfig(matrix_bits=6, matrix_method="gptq_lite", clip_rule="sdclip", small_numel=16, lqer_rank=4,
                    lqer_top_k=1, lqer_format="asym")
    payload, _ = quantize_state_dict({"blocks.0.mlp.fc.weight": _mat(64, 128, seed=0)}, q)
    payload["blocks.0.mlp.fc.weight.lqer_b"]["method"] = "lqer_sym"
    body = serialize_payload(payload)
    comp = zlib.compress(body)
    hb = json.dumps({"compressor": "zlib", "level": 9, "config_hash": "", "meta": {}, "body_bytes": len(body)},
                    sort_keys=True, separators=(",", ":")).encode()
    blob = _ART_PREFIX.pack(ARTIFACT_MAGIC, 2, len(hb), zlib.crc32(hb), len(comp), hashlib.sha256(comp).digest())
    with pytest.raises(ArtifactError, match="undecodable payload .*LQER factors"):
        unpack_artifact(blob + hb + comp)


def test_record_env_vars_and_preset():
    env = {"MLP_CLIP_SIGMAS": "11.5", "ATTN_CLIP_SIGMAS": "13", "EMBED_CLIP_SIGMAS": "14", "MATRIX_CLIP_SIGMAS": "12",
           "EMBED_BITS": "7", "LQER_ENABLED": "1", "LQER_ASYM_ENABLED": "1", "LQER_TOP_K": "2",
           "LQER_FACTOR_BITS": "5", "LQER_ASYM_GROUP": "32", "GATED_ATTN_QUANT_GATE": "1"}
    cfg, warns = resolve_config("smoke", env=env)
    q = cfg.quant
    assert not warns
    assert (q.sdclip_k_mlp, q.sdclip_k_attn, q.sdclip_k_embed, q.sdclip_k_matrix) == (11.5, 13.0, 14.0, 12.0)
    assert (q.embed_bits, q.lqer_rank, q.lqer_format, q.lqer_top_k, q.lqer_bits, q.lqer_asym_group, q.gate_int8) == (
        7, 4, "asym", 2, 5, 32, True)
    q = resolve_config("record_1855", env={"LQER_ENABLED": "0", "LQER_ASYM_ENABLED": "0"})[0].quant
    assert q.lqer_rank == 0 and q.lqer_format == "sym"
    q = resolve_config("record_1855", env={})[0].quant
    assert (q.sdclip_k_attn, q.sdclip_k_mlp, q.sdclip_k_embed, q.sdclip_k_matrix, q.embed_bits) == (
        13.0, 11.5, 14.0, 12.85, 7)
    assert (q.sdclip_std, q.gptq_numerics, q.gptq_embed, q.lqer_format, q.gate_int8) == (
        "unbiased", "record", True, "asym", True)
    assert (q.gptq_reserve_seconds, q.calib_seqs, q.calib_seq_len) == (0.5, 768, 2048)
    assert resolve_config("smoke", env={"GPTQ_RESERVE_SECONDS": "0.5"})[0].quant.gptq_reserve_seconds == 0.5
    for preset in ("record_549", "record_1128"):
        q = resolve_config(preset, env={})[0].quant
        assert (q.sdclip_k_attn, q.sdclip_k_mlp, q.sdclip_std, q.gptq_numerics, q.lqer_format, q.gate_int8) == (
            0.0, 0.0, "biased", "pgolf", "pgolf", False)
