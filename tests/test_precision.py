"""run.low_precision: where a config allows bf16 (Newton-Schulz, Muon's reduction, bf16 tables),
hw.choose_precision decides bf16 or fp32 for the machine, and the run, the optimizer, the model,
`pgolf info` and `pgolf bench throughput` follow that decision."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import tiny  # noqa: E402

import pgolf.hw
import pgolf.run
from pgolf.config import ConfigError, resolve_config
from pgolf.hw import Precision, choose_precision, cpu_has_native_bf16
from pgolf.model.build import build_model
from pgolf.optim.builder import build_optimizers
from pgolf.run import train
from pgolf.runlog import parse_event

BF16, FP32 = torch.bfloat16, torch.float32
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _native(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(pgolf.hw, "cpu_has_native_bf16", lambda *a: native)


# --- the decision ---------------------------------------------------------------------------

@pytest.mark.parametrize("requested, device, native, low, reason", [
    ("auto", CUDA, False, BF16, "cuda"),
    ("auto", CPU, True, BF16, "cpu_with_native_bf16"),
    ("auto", CPU, False, FP32, "cpu_without_native_bf16"),
    ("bf16", CPU, False, BF16, "run.low_precision=bf16"),
    ("fp32", CPU, True, FP32, "run.low_precision=fp32"),
    ("fp32", CUDA, True, FP32, "run.low_precision=fp32"),
])
def test_decision_table(monkeypatch, requested, device, native, low, reason):
    _native(monkeypatch, native)
    assert choose_precision(requested, device) == Precision(low, reason)


def test_unknown_choice_is_refused_by_the_config_check():
    with pytest.raises(ConfigError, match="run.low_precision"):
        resolve_config("smoke", None, {}, ["run.low_precision=fp16"])


@pytest.mark.parametrize("flags, native", [
    ("fpu sse2 avx avx2 fma", False),               # AVX2 only: bf16 is emulated
    ("fpu avx2 avx512f avx512_bf16", True),
    ("fpu avx2 amx_tile amx_bf16 amx_int8", True),
    ("fpu avx2 avx512_bf16x", False),               # whole flags only
])
def test_cpuinfo_flags(tmp_path, flags, native):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(str(info)) is native


def test_unreadable_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is False


def test_log_fields_name_each_dtype_and_the_reason():
    fp32 = Precision(FP32, "cpu_without_native_bf16")
    assert fp32.fields("bf16") == {"ns": "fp32", "reduce": "fp32", "tables": "fp32",
                                   "reason": "cpu_without_native_bf16"}
    bf16 = Precision(BF16, "cuda")
    assert bf16.fields("bf16")["tables"] == "bf16" and bf16.fields("fp32")["tables"] == "fp32"
    assert bf16.fields("fp32")["ns"] == "bf16"


# --- what the model and the optimizer receive -----------------------------------------------

def _cfg(*sets):
    base = ["model.arch=record", "model.num_layers=2", "model.model_dim=32", "model.num_heads=2",
            "model.num_kv_heads=1", "model.vocab_size=64", "model.bigram_vocab_size=32", "model.bigram_dim=8",
            "model.ve_dim=8", "model.embed_dtype=bf16", "model.stream_dtype=embed"]
    return resolve_config("smoke", None, {}, base + list(sets))[0]


@pytest.mark.parametrize("native, want", [(False, FP32), (True, BF16)])
def test_optimizer_and_tables_follow_the_decision(monkeypatch, native, want):
    _native(monkeypatch, native)
    cfg = _cfg()
    prec = choose_precision(cfg.run.low_precision, CPU)
    model = build_model(cfg, CPU)  # decides itself from run.low_precision
    assert {p.dtype for p in model.embedding_params()} == {want}
    muon = build_optimizers(model, cfg.optim, precision=prec).muon
    assert (muon.ns_dtype, muon.reduce_dtype) == (want, want)


def test_fp32_config_tables_stay_fp32_under_bf16():
    cfg = _cfg("model.embed_dtype=fp32", "run.low_precision=bf16")
    assert {p.dtype for p in build_model(cfg, CPU).embedding_params()} == {FP32}


def _steps(cfg, prec, n=3):
    """n training steps on fixed random tokens: (the loss of each step, the final weights)."""
    torch.manual_seed(0)
    model = build_model(cfg, CPU, prec)
    opt = build_optimizers(model, cfg.optim, precision=prec)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(n):
        x = torch.randint(0, cfg.model.vocab_size, (2, 32), generator=g)
        y = torch.randint(0, cfg.model.vocab_size, (2, 32), generator=g)
        loss = model(x, y)
        loss.backward()
        losses.append(loss.item())
        opt.reduce_and_step(model, 0.0)
    return losses, {k: v.detach().float() for k, v in model.state_dict().items()}


def test_auto_with_native_bf16_trains_bit_identical_to_bf16_and_close_to_fp32(monkeypatch):
    _native(monkeypatch, True)
    auto = _steps(_cfg(), choose_precision("auto", CPU))
    bf16 = _steps(_cfg(), choose_precision("bf16", CPU))
    fp32 = _steps(_cfg(), choose_precision("fp32", CPU))
    assert auto[0] == bf16[0] and all(torch.equal(auto[1][k], bf16[1][k]) for k in auto[1])
    # fp32 changes the rounding only: the same losses to bf16's precision, yet not the same bits.
    # (Weights are not compared elementwise: AdamW's first steps move each entry by about
    # +-lr whatever the gradient's size, so a rounding that flips a tiny gradient's sign
    # moves that entry by 2 lr.)
    assert fp32[0] == pytest.approx(bf16[0], rel=2e-3)
    assert any(not torch.equal(fp32[1][k], bf16[1][k]) for k in fp32[1])


# --- the run, `pgolf info`, `pgolf bench throughput` -----------------------------------------

@pytest.mark.slow
def test_run_logs_the_choice_and_builds_with_it(monkeypatch, embedded_corpus, tmp_path):
    _native(monkeypatch, False)
    seen = {}
    real_model, real_opt = pgolf.run.build_model, pgolf.run.build_optimizers

    def spy_model(*a, **kw):
        seen["model"] = real_model(*a, **kw)
        return seen["model"]

    def spy_opt(*a, **kw):
        seen["opt"] = real_opt(*a, **kw)
        return seen["opt"]
    monkeypatch.setattr(pgolf.run, "build_model", spy_model)
    monkeypatch.setattr(pgolf.run, "build_optimizers", spy_opt)
    cfg = tiny(embedded_corpus, "model.arch=record", "model.embed_dtype=bf16", "run.iterations=1")
    train(cfg, str(tmp_path / "run"))
    events = [parse_event(ln) for ln in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    prec = [e for e in events if e.get("event") == "precision"]
    assert prec == [{"event": "precision", "ns": "fp32", "reduce": "fp32", "tables": "fp32",
                     "reason": "cpu_without_native_bf16"}]
    muon = seen["opt"].muon
    assert (muon.ns_dtype, muon.reduce_dtype) == (FP32, FP32)
    assert {p.dtype for p in seen["model"].embedding_params()} == {FP32}


def test_info_precision_is_the_run_choice(monkeypatch):
    from pgolf.cli import info_precision
    _native(monkeypatch, False)
    cfg = _cfg("run.device=cpu")
    assert info_precision(cfg) == {"ns": "fp32", "reduce": "fp32", "tables": "fp32",
                                   "reason": "cpu_without_native_bf16"}
    # run.device=cuda is taken at its word, even on a machine without CUDA.
    assert info_precision(_cfg("run.device=cuda"))["reason"] == "cuda"


@pytest.mark.slow
def test_info_says_which_and_why(monkeypatch, capsys):
    from pgolf.cli import main
    _native(monkeypatch, False)
    assert main(["info", "--preset", "record_1128", "--set", "run.device=cpu"]) == 0
    assert "precision here: ns=fp32 reduce=fp32 tables=fp32 reason=cpu_without_native_bf16" in capsys.readouterr().out
    assert main(["info", "--preset", "record_1128", "--set", "run.device=cpu", "--set", "run.low_precision=bf16"]) == 0
    assert "precision here: ns=bf16 reduce=bf16 tables=bf16 reason=run.low_precision=bf16" in capsys.readouterr().out


def test_bench_throughput_both_times_each_dtype(monkeypatch):
    from pgolf.bench import bench_throughput, format_throughput
    _native(monkeypatch, False)
    cfg = _cfg("run.train_batch_tokens=128", "run.train_seq_len=32", "run.accum_world=1", "run.device=cpu")
    res = bench_throughput(cfg, steps=2, warmup=0, precision="both")
    assert res["bf16"]["precision"]["ns"] == "bf16" and res["fp32"]["precision"]["ns"] == "fp32"
    assert res["bf16_over_fp32"] == res["bf16"]["median_ms"] / res["fp32"]["median_ms"]
    assert res["bf16"]["steps"] == res["fp32"]["steps"] == 2 and res["paired_ratio_median"] > 0
    # The twins start from the same weights and tokens: the same first loss to bf16's precision.
    assert res["bf16"]["loss_first"] == pytest.approx(res["fp32"]["loss_first"], rel=1e-3)
    text = format_throughput(res)
    assert "bf16 / fp32 step time:" in text and "reason=run.low_precision=fp32" in text
    auto = bench_throughput(cfg, steps=1, warmup=0)
    assert auto["precision"] == {"ns": "fp32", "reduce": "fp32", "tables": "fp32",
                                 "reason": "cpu_without_native_bf16"}
