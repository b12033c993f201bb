"""bench/gpu_check.sh stays runnable on a CPU (its dry run), its summary builder reads what
the steps write, and the bench fields it relies on (MFU, compile time, eval projection) hold
their arithmetic. Nothing here asserts a timing."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from pgolf.bench import BenchError, bench_mfu, bench_peak_tflops, bench_throughput
from pgolf.bench_eval import BENCH_FULL_VAL_TOKENS, bench_eval, bench_eval_projection, format_eval
from pgolf.config import config_to_toml, resolve_config
from pgolf.model.banks import unbank_state_dict
from pgolf.model.gpt import GPT
from pgolf.quant.artifact import pack_artifact, write_artifact
from pgolf.quant.export import shippable_config_toml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
TINY = ["model.num_layers=2", "model.model_dim=64", "model.num_heads=4", "model.num_kv_heads=2",
        "model.mlp_mult=2.0", "model.bigram_dim=16", "model.ve_dim=16", "run.train_seq_len=32",
        "run.train_batch_tokens=256", "run.accum_world=2", "run.device=cpu"]


def _load_gpu_check():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    return gpu_check


@pytest.mark.slow
def test_dry_run_lists_the_steps_and_skips_every_gpu_test(tmp_path):
    assert os.access(SCRIPT, os.X_OK), "bench/gpu_check.sh must be executable"
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGOLF_GPU", "GPU_CHECK"))}
    # The CPU view even on a machine with a GPU: the dry run must only ever skip.
    env.update(OUT=str(out), GPU_CHECK_WORK=str(tmp_path / "work"), PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for step in ("(a)", "(b)", "(c)", "(d)", "(k)"):
        assert step in r.stdout
    assert "pytest -m gpu" in r.stdout and "dry run" in r.stdout
    suite = ET.parse(out / "junit_gpu.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "skipped", "errors", "failures")}
    assert counts["tests"] >= 8 and counts["skipped"] == counts["tests"], counts
    assert counts["errors"] == counts["failures"] == 0, counts
    result = json.loads((out / "gpu_check.json").read_text())
    assert [s["step"] for s in result["steps"]] == ["a", "b", "c", "d", "k"]
    assert result["steps"][0]["status"] == "ok"
    assert all(s["status"] == "skipped" for s in result["steps"][1:])
    assert result["tests"]["junit"]["skipped"] == counts["tests"]
    assert (out / "gpu_check.log").is_file() and r.stdout.rstrip().splitlines()[-1].startswith("all results:")


def test_gather_builds_one_json_and_a_summary_from_step_outputs(tmp_path):
    gc = _load_gpu_check()
    out, work = tmp_path / "out", tmp_path / "work"
    (work / "run").mkdir(parents=True)
    out.mkdir()
    steps = [{"step": "a", "status": "ok", "seconds": 100.0, "timeout_s": 170, "note": "exit 0"},
             {"step": "b1", "status": "timeout", "seconds": 110.0, "timeout_s": 110, "note": "exit 124"}]
    (work / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    tp = {"device": "NVIDIA H100 80GB HBM3", "median_ms": 100.0, "tokens_per_s": 983040.0, "ratio_to_ref": 0.83,
          "achieved_tflops": 224.8, "mfu": 0.227, "peak_bf16_tflops": 989.0, "peak_source": "H100 SXM",
          "peak_mem_bytes": 20 * 2**30, "compile_s": 61.0, "tokens_per_step": 98304}
    (work / "throughput_accum1.json").write_text("some log line\n" + json.dumps(tp))
    metrics = {"val_bpb": 1.9, "pre_quant_val_bpb": 1.89, "quant_penalty_bpb": 0.01, "eval_mode": "sliding",
               "artifact_bytes": 9_000_000, "steps": 300, "stop_reason": "iterations", "step_avg_ms": 110.0}
    (work / "run" / "metrics.json").write_text(json.dumps(metrics))
    (work / "run" / "log.txt").write_text("event:priming_done steps:4 qat_graph:True seconds:80.5\n")
    rows = [{"mode": "ttt", "seconds": 6.0, "tokens": 131072, "projected_seconds": 354.9,
             "project_tokens": BENCH_FULL_VAL_TOKENS, "project_gpus": 8}]
    (work / "eval_phases.json").write_text(json.dumps(rows))
    res = gc.gather(out, work, 420.0)
    saved = json.loads((out / "gpu_check.json").read_text())
    assert saved["summary"] == res["summary"]
    assert saved["throughput"]["accum1_48x2048"]["mfu"] == 0.227
    assert saved["throughput"]["accum8_786432"] is None
    assert saved["train"]["val_bpb"] == 1.9
    assert saved["train"]["log_events"]["priming_done"]["seconds"] == "80.5"
    assert saved["git_commit"] or "no .git" in saved["git_note"]
    text = "\n".join(res["summary"])
    assert "MFU 22.7%" in text and "val_bpb 1.9000" in text and "ttt 6.0 s -> 355 s" in text
    assert "step b1: timeout" in text and "(c) train 300 steps" in text


@pytest.mark.parametrize("name,peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                       ("NVIDIA H200", 989.0), ("NVIDIA H100 NVL", None),
                                       ("NVIDIA GH200 480GB", None), ("cpu", None)])
def test_peak_table_by_device_name(name, peak):
    got, source = bench_peak_tflops(name)
    assert got == peak
    if peak is None:
        assert name in source  # an unknown device is named, not guessed
    assert bench_peak_tflops(name, override=500.0) == (500.0, "--peak-tflops")


def test_mfu_is_achieved_over_peak():
    assert bench_mfu(247.25, 989.0) == pytest.approx(0.25)
    assert bench_mfu(247.25, None) is None


def test_throughput_report_has_mfu_compile_and_qat_fields():
    cfg, _ = resolve_config("smoke", None, {}, TINY + ["model.arch=record", "quant.late_qat_threshold=0.15"])
    torch.manual_seed(0)
    res = bench_throughput(cfg, steps=1, warmup=1, peak_tflops=2.0, qat="on")
    assert res["peak_bf16_tflops"] == 2.0 and res["peak_source"] == "--peak-tflops"
    assert res["mfu"] == pytest.approx(res["achieved_tflops"] / 2.0)
    assert res["first_step_s"] > 0 and res["compile_s"] is None  # model.compile is off
    assert res["qat"] == "on" and res["qat_scope"] == cfg.quant.qat_scope
    plain, _ = resolve_config("smoke", None, {}, TINY)
    res = bench_throughput(plain, steps=1, warmup=0)
    assert res["mfu"] is None and "cpu" in res["peak_source"] and res["qat"] == "none"
    with pytest.raises(BenchError, match="--qat"):
        bench_throughput(plain, steps=1, warmup=0, qat="maybe")


def test_eval_projection_arithmetic():
    assert bench_eval_projection(6.0, 131_072, BENCH_FULL_VAL_TOKENS, 8) == pytest.approx(
        6.0 * 62_021_632 / 131_072 / 8)
    assert bench_eval_projection(10.0, 1000, 1000, 1) == 10.0
    with pytest.raises(BenchError, match="project"):
        bench_eval_projection(1.0, 100, 1000, 0)


def test_bench_eval_rows_carry_the_projection(embedded_corpus, tmp_path):
    sets = TINY + ["model.arch=record", f"data.path={embedded_corpus['data_path']}",
                   f"data.tokenizer_path={embedded_corpus['tokenizer_path']}", "eval.max_tokens=2048",
                   "eval.stride=16", "eval.batch_seqs=16"]
    cfg, _ = resolve_config("smoke", None, {}, sets)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    flat = unbank_state_dict({k: v.detach() for k, v in model.state_dict().items()}, model.num_layers)
    path = write_artifact(tmp_path / "model.ptz",
                          pack_artifact(flat, cfg.quant, meta={"config_toml": shippable_config_toml(cfg)}))
    (tmp_path / "config.toml").write_text(config_to_toml(cfg))
    rows = bench_eval(cfg, str(path), ["plain", "sliding"], project_tokens=BENCH_FULL_VAL_TOKENS, project_gpus=8,
                      warmup=True)
    assert [r["mode"] for r in rows] == ["plain", "sliding"]
    for r in rows:
        assert r["tokens"] == 2048 and r["warmup_seconds"] is not None
        assert r["projected_seconds"] == pytest.approx(r["seconds"] * BENCH_FULL_VAL_TOKENS / 2048 / 8)
    table = format_eval(rows)
    assert "projected s (62,021,632 tokens / 8 GPUs)" in table and table.count("\n") == 3
