"""Calibration: Hessian capture equals a plain forward, validation is refused, the reserve holds,
and the GPTQ policy / bench run end to end on a small model."""

from pathlib import Path

import pytest
import torch

from pgolf.config import ConfigError, config_to_toml, resolve_config
from pgolf.model.banks import unbank_state_dict
from pgolf.model.gpt import GPT
from pgolf.quant.artifact import build_artifact, group_byte_report, unpack_artifact
from pgolf.quant.calibration import (HEAD_HESSIAN_NAME, CalibrationError, calibration_tokens, collect_hessians,
                                     sample_sequences)
from pgolf.quant.policy import dequantize_state_dict, quantize_state_dict
from pgolf.wallclock import training_cap_ms

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
FINEWEB = SHARED_DATA / "datasets" / "fineweb_legal_sp1024"
TOKENIZER = SHARED_DATA / "tokenizers" / "fineweb_1024_bpe.model"


def _cfg(*sets):
    return resolve_config("smoke", env={}, sets=["model.num_layers=2", "model.model_dim=64", "model.num_heads=2",
                                                  "model.num_kv_heads=1", *sets])[0]


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    m = GPT(cfg.model, banked=False)
    with torch.no_grad():
        for p in m.matrix_params():
            p.normal_(0, 0.3)  # the zero-initialized projections would hide their inputs
    return m.eval()


def test_hessians_are_the_inputs_of_each_matrix():
    cfg = _cfg()
    m = _model(cfg)
    toks = torch.randint(0, cfg.model.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = m.forward_hidden(toks)
    hs = collect_hessians(m, toks, 2, "cpu", with_head=True)
    assert m.weight_transform is None
    names = {n for n, p in m.named_parameters() if any(p is q for q in m.matrix_params())}
    assert set(hs) == names | {HEAD_HESSIAN_NAME}
    # The tap changes nothing the model computes; q, k and v read the same normed input.
    torch.testing.assert_close(hs[HEAD_HESSIAN_NAME], (plain.reshape(-1, plain.shape[-1]).double().T
                                                       @ plain.reshape(-1, plain.shape[-1]).double() / 48).float())
    torch.testing.assert_close(hs["blocks.1.attn.c_q.weight"], hs["blocks.1.attn.c_v.weight"])
    h = hs["blocks.0.mlp.proj.weight"]
    assert h.shape == (cfg.model.model_dim * 2, cfg.model.model_dim * 2)
    ev = torch.linalg.eigvalsh(h.double())
    assert float(ev.min()) > -1e-6 * float(ev.max())  # PSD up to float32 rounding
    # The MLP's down projection sees leaky_relu(fc x)^2, nothing like the block input.
    assert not torch.allclose(hs["blocks.0.mlp.fc.weight"], hs["blocks.0.attn.c_q.weight"])


def test_validation_is_never_a_calibration_source(tmp_path):
    cfg = _cfg()
    cfg.quant.calib_source = "val"  # past config_checks, which refuses it too (below)
    with pytest.raises(CalibrationError, match="validation tokens may never calibrate"):
        calibration_tokens(cfg, _model(cfg), "cpu")
    with pytest.raises(ConfigError, match="calib_source"):
        _cfg("quant.calib_source=val")
    # A train pattern that reaches a validation shard is refused too.
    import numpy as np

    from pgolf.data.shards import write_shard
    write_shard(str(tmp_path / "fineweb_val_000000.bin"), np.arange(4096, dtype=np.uint16) % 500)
    bad = _cfg(f"data.path={tmp_path}", "data.train_pattern=fineweb_*.bin", f"data.tokenizer_path={tmp_path}/x.model")
    with pytest.raises(CalibrationError, match="validation shard"):
        calibration_tokens(bad, _model(bad), "cpu")


def test_self_generated_calibration_is_seeded_and_in_vocab():
    cfg = _cfg()
    m = _model(cfg)
    a = sample_sequences(m, 3, 12, 0.8, 2, "cpu", seed=5)
    b = sample_sequences(m, 3, 12, 0.8, 2, "cpu", seed=5)
    assert a.shape == (3, 12) and torch.equal(a, b) and bool((a[:, 0] == 1).all())
    assert int(a.max()) < cfg.model.vocab_size


def test_reserve_seconds_shorten_the_training_cap():
    assert training_cap_ms(_cfg("run.max_wallclock_seconds=600", "quant.gptq_reserve_seconds=12.5")) == 587_500.0
    assert training_cap_ms(_cfg("run.max_wallclock_seconds=600")) == 600_000.0
    assert training_cap_ms(_cfg("run.max_wallclock_seconds=0", "quant.gptq_reserve_seconds=30")) == 0.0
    with pytest.raises(ConfigError, match="gptq_reserve_seconds"):
        _cfg("run.max_wallclock_seconds=60", "quant.gptq_reserve_seconds=60")


def test_config_refuses_hessian_rules_without_gptq():
    with pytest.raises(ConfigError, match="clip_weighting"):
        _cfg("quant.matrix_method=gptq_lite", "quant.clip_weighting=hessian")
    with pytest.raises(ConfigError, match="attn_bits"):
        _cfg("quant.attn_bits=3")


def _flat_and_hessians(cfg):
    m = _model(cfg)
    toks = torch.randint(0, cfg.model.vocab_size, (4, 32), generator=torch.Generator().manual_seed(1))
    hs = collect_hessians(m, toks, 4, "cpu", with_head=True)
    return {k: v.detach() for k, v in m.state_dict().items()}, hs, m, toks


def test_gptq_policy_lowers_the_model_output_error_and_round_trips():
    cfg = _cfg("quant.small_numel=256", "quant.matrix_bits=5", "quant.compressor=lzma", "quant.level=6")
    flat, hs, m, toks = _flat_and_hessians(cfg)

    def out_err(qcfg, h=None):
        payload, _ = quantize_state_dict(flat, qcfg, h)
        q = GPT(cfg.model, banked=False).eval()
        q.load_state_dict(dequantize_state_dict(payload))
        with torch.no_grad():
            return float((q.forward_hidden(toks) - m.forward_hidden(toks)).pow(2).mean()), payload

    rtn, _ = out_err(_cfg("quant.small_numel=256", "quant.matrix_bits=5", "quant.matrix_method=gptq_lite",
                          "quant.clip_rule=sdclip").quant)
    gq = _cfg("quant.small_numel=256", "quant.matrix_bits=5", "quant.matrix_method=gptq",
              "quant.clip_rule=sdclip", "quant.lqer_rank=2", "quant.lqer_top_k=2", "quant.attn_bits=6",
              "quant.code_order=columns", "quant.fp16_layout=shuffled", "quant.compressor=lzma").quant
    err, payload = out_err(gq, hs)
    assert err < rtn
    methods = {n: e.get("method", e["kind"]) for n, e in payload.items()}
    assert methods["blocks.0.mlp.fc.weight"] == "gptq_sdclip"
    assert payload["blocks.0.attn.c_q.weight"]["bits"] == 6 and payload["blocks.0.mlp.fc.weight"]["bits"] == 5
    assert sum(m == "lqer" for m in methods.values()) == 4
    blob, _ = build_artifact(flat, gq, hessians=hs)
    sd, header = unpack_artifact(blob)
    want = dequantize_state_dict(payload)
    assert set(sd) == set(flat)
    for k in want:
        torch.testing.assert_close(sd[k], want[k], rtol=0, atol=0)
    groups = group_byte_report(payload, gq)
    assert {"attn", "mlp", "embed", "lqer"} <= set(groups) and all(g["compressed_bytes"] > 0 for g in groups.values())


def test_default_layout_keys_absent():
    cfg = _cfg("quant.small_numel=256")
    flat, _, _, _ = _flat_and_hessians(cfg)
    blob, _ = build_artifact(flat, cfg.quant)
    import json  # noqa: E401
    import lzma
    import struct

    from pgolf.quant.artifact import _ART_PREFIX
    hlen = struct.unpack_from("<I", blob, 8)[0]
    header = json.loads(blob[_ART_PREFIX.size:_ART_PREFIX.size + hlen])
    from pgolf.quant.codec import decompress_bytes
    body = decompress_bytes(blob[_ART_PREFIX.size + hlen:], header["compressor"], header["level"])
    mlen = struct.unpack_from("<I", body, 0)[0]
    manifest = json.loads(body[4:4 + mlen])["tensors"]
    assert not any("order" in m or "shuffle" in m for m in manifest)


@pytest.mark.slow
def test_bench_quant_on_a_small_run(tmp_path):
    if not FINEWEB.is_dir() or not TOKENIZER.is_file():
        pytest.skip(f"shared FineWeb sample absent: {FINEWEB}")
    from pgolf.bench_quant import bench_quant, bench_quant_config
    cfg = _cfg(f"data.path={FINEWEB}", f"data.tokenizer_path={TOKENIZER}", "eval.max_tokens=2048",
               "eval.seq_len=256", "quant.calib_seqs=4", "quant.small_numel=256")
    (tmp_path / "config.toml").write_text(config_to_toml(cfg))
    m = _model(cfg)
    torch.save(unbank_state_dict(m.state_dict(), m.num_layers), tmp_path / "final_state.pt")
    cfg = bench_quant_config(str(tmp_path), [])
    rows = bench_quant(cfg, str(tmp_path), ["lite:matrix_method=gptq_lite",
                                            "gq:matrix_method=gptq,clip_rule=sdclip,lqer_rank=2"],
                       out=str(tmp_path / "q.json"))
    assert [r["variant"] for r in rows] == ["lite", "gq"]
    assert rows[1]["calib_seconds"] > 0 and len(rows[1]["lqer_tensors"]) == 6
    assert all(r["model_bytes"] > 0 and r["groups"]["mlp"]["compressed_bytes"] > 0 for r in rows)
    assert (tmp_path / "q.json").is_file()
