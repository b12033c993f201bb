"""`pgolf train` end to end on the device: a tiny run on synthetic shards (the GPU machine has
no embedded-corpus package), export, round trip, evaluation, metrics.json."""

import json
import math

import pytest
from _gpu_helpers import make_dataset

from pgolf.cli import main

pytestmark = pytest.mark.gpu


def test_pgolf_train_tiny_run_on_device(dev, tmp_path, report):
    data = make_dataset(tmp_path / "data", vocab=512)
    out = tmp_path / "run"
    sets = [f"run.device={dev.type}", f"data.path={data['data_path']}", f"data.tokenizer_path={data['tokenizer_path']}",
            f"model.vocab_size={data['vocab']}", "run.iterations=40", "run.max_wallclock_seconds=0",
            "run.train_log_every=10", "eval.max_tokens=16384", "eval.stride=64", "model.arch=record"]
    args = ["train", "--preset", "smoke", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    log = (out / "log.txt").read_text()
    report.record("train_tiny", {k: metrics.get(k) for k in (
        "device", "val_bpb", "pre_quant_val_bpb", "quant_penalty_bpb", "steps", "step_avg_ms", "artifact_bytes",
        "eval_mode", "legal", "wall_time_s")} | {"train_tokens": data["train_tokens"]})
    assert metrics["steps"] == 40
    assert (metrics["device"] == "cpu") == (dev.type == "cpu")
    assert math.isfinite(metrics["val_bpb"]) and metrics["val_bpb"] > 0
    assert metrics["eval_mode"] == "sliding" and metrics["legal"] is True
    assert (out / "model.ptz").stat().st_size == metrics["artifact_bytes"] - metrics["code_bytes"]
    assert "priming_done" in log
