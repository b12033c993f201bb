"""`pgolf bench`: throughput, artifact budget and the FLOPs formula on tiny configs (CPU)."""

import json

import pytest
import torch

from pgolf.bench import (BenchError, bench_artifact, bench_fill_weights, bench_flops_per_token, bench_micro_batch,
                         bench_throughput)
from pgolf.cli import main
from pgolf.config import resolve_config
from pgolf.model.gpt import GPT

TINY = ["model.num_layers=2", "model.model_dim=64", "model.num_heads=4", "model.num_kv_heads=2",
        "model.mlp_mult=2.0", "model.bigram_dim=16", "model.ve_dim=16", "run.train_seq_len=32",
        "run.train_batch_tokens=256", "run.accum_world=2", "run.device=cpu"]


def _tiny(*extra: str):
    cfg, _ = resolve_config("smoke", None, None, TINY + list(extra))
    return cfg


def test_flops_formula_baseline_by_hand() -> None:
    cfg = _tiny("model.arch=baseline", "model.bigram_vocab_size=0", "model.ve_enabled=false")
    f = bench_flops_per_token(GPT(cfg.model), 32)
    per_layer = 64 * 64 + 32 * 64 + 32 * 64 + 64 * 64 + 128 * 64 + 64 * 128  # q k v out up down
    assert f["block_matrix_params"] == 2 * per_layer == 57344
    assert f["head_params"] == 1024 * 64 and f["projection_params"] == 0
    assert f["attention_flops"] == 6 * 2 * 32 * 64
    assert f["flops_per_token"] == 6 * (57344 + 65536) + 6 * 2 * 32 * 64


def test_flops_record_1128_matches_design() -> None:
    cfg, _ = resolve_config("record_1128", None, None, [])
    with torch.device("meta"):
        f = bench_flops_per_token(GPT(cfg.model), cfg.run.train_seq_len)
    assert f["block_matrix_params"] == 25_952_256  # record_1128: 25.95 M block weights
    assert f["head_params"] == 524_288
    assert f["projection_params"] == 128 * 512 + 128 * 256  # BigramHash and VE projections
    assert f["attention_flops"] == 6 * 11 * 2048 * 512  # ~69 M
    assert f["flops_per_token"] == 228_655_104  # ~230 M


def test_throughput_tiny_reports_positive_numbers() -> None:
    torch.manual_seed(0)
    res = bench_throughput(_tiny("model.arch=record"), steps=2, warmup=1)
    for key in ("median_ms", "mean_ms", "tokens_per_s", "flops_per_token", "achieved_tflops", "peak_mem_bytes"):
        assert res[key] > 0, key
    assert res["steps"] == 2 and res["grad_accum"] == 2 and res["micro_batch_seqs"] == 4
    assert res["tokens_per_s_per_gpu"] is None and res["ratio_to_ref"] is None  # CPU
    assert res["tokens_per_s"] == pytest.approx(256 / (res["median_ms"] / 1000))
    # Uniform random targets: the loss cannot beat ln(1024) by much, and must be finite.
    assert 3.0 < res["loss_first"] < 8.0 and 3.0 < res["loss_last"] < 8.0


def test_micro_batch_sets_global_batch_and_rejects_zero() -> None:
    cfg = _tiny()
    bench_micro_batch(cfg, 3)
    assert cfg.run.train_batch_tokens == 3 * 32 * 2
    with pytest.raises(BenchError, match="micro-batch-seqs"):
        bench_micro_batch(cfg, 0)


def test_fill_weights_matches_sigma_and_emb_std() -> None:
    cfg = _tiny("model.arch=record")
    model = GPT(cfg.model)
    bench_fill_weights(model, sigma=0.3, emb_std=0.05, seed=1)
    assert model.mlp_up_bank[0].std().item() == pytest.approx(0.3, rel=1e-3)
    assert model.qo_bank[3].std().item() == pytest.approx(0.3, rel=1e-3)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert model.bigram.proj.weight.std().item() == pytest.approx(0.3, rel=1e-3)


@pytest.mark.slow
def test_artifact_tiny_total_is_model_plus_code() -> None:
    cfg = _tiny("model.arch=record")
    res = bench_artifact(cfg, "smoke", sigma=0.3, seed=0)
    assert res["model_bytes"] > 10_000
    assert res["total_bytes"] == res["model_bytes"] + res["code_bytes"]
    assert res["margin"] == 16_000_000 - res["total_bytes"] and res["ok"]
    assert 0 < res["code_bytes_minified"] < res["code_bytes_plain"]
    assert res["total_bytes_minified"] == res["model_bytes"] + res["code_bytes_minified"]
    assert set(res["phases_s"]) == {"build_fill_s", "unbank_s", "quantize_compress_s", "unpack_verify_s", "bundle_s"}


def test_cli_bench_throughput_json(capsys) -> None:
    args = ["bench", "throughput", "--preset", "smoke", "--steps", "1", "--warmup", "0", "--json"]
    for s in TINY:
        args += ["--set", s]
    assert main(args + ["--micro-batch-seqs", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tokens_per_step"] == 1 * 32 * 2 and res["steps"] == 1


def test_cli_bench_eval_without_an_artifact_is_one_line(tmp_path, capsys) -> None:
    assert main(["bench", "eval", str(tmp_path), "--modes", "plain"]) == 2
    err = capsys.readouterr().err
    assert "missing model.ptz" in err and len(err.strip().splitlines()) == 1


def test_bench_eval_rejects_an_unknown_mode_before_loading_anything(tmp_path) -> None:
    from pgolf.bench_eval import bench_eval
    from pgolf.config import resolve_config
    from pgolf.eval.bpb import EvalInputError
    cfg, _ = resolve_config("smoke", env={})
    # The artifact path does not exist: only the mode check can be what fails.
    with pytest.raises(EvalInputError, match="unknown eval mode 'sliding-window'"):
        bench_eval(cfg, str(tmp_path / "missing.ptz"), ["plain", "sliding-window"])


def test_quant_variant_parsing():
    from pgolf.bench import BenchError
    from pgolf.bench_quant import parse_quant_variant
    assert parse_quant_variant("row:matrix_bits=6,clip_search=row") == (
        "row", ["quant.matrix_bits=6", "quant.clip_search=row"])
    with pytest.raises(BenchError, match="expected NAME:field=value"):
        parse_quant_variant("justaname")


def test_bench_quant_says_why_when_nothing_would_be_quantized(tmp_path) -> None:
    import torch

    from pgolf.bench import BenchError
    from pgolf.bench_quant import bench_quant
    from pgolf.config import resolve_config
    cfg, _ = resolve_config("smoke", env={})
    torch.save({"tok_emb.weight": torch.zeros(64, 16), "blocks.0.attn.c_q.weight": torch.zeros(16, 16)},
               tmp_path / "final_state.pt")
    with pytest.raises(BenchError, match="identical rows"):
        bench_quant(cfg, str(tmp_path))


def test_bench_quant_validates_every_variant_first(tmp_path) -> None:
    import torch

    from pgolf.bench_quant import bench_quant
    from pgolf.config import ConfigError, resolve_config
    cfg, _ = resolve_config("smoke", env={})
    torch.save({"w": torch.zeros(512, 512)}, tmp_path / "final_state.pt")
    with pytest.raises(ConfigError, match="matrix_bits"):
        bench_quant(cfg, str(tmp_path), variants=["ok:matrix_bits=6", "bad:matrix_bits=3"])
