"""record_1855 end to end from the command line on the shared CaseOps data, at toy width:
train with depth recurrence and parallel lanes, GPTQ + LQER export, phased LoRA TTT that
charges the byte sidecar, down to the final val_bpb line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pgolf.quant.artifact import read_artifact

pytestmark = [pytest.mark.slow]  # one real training in a subprocess (~25 s on an idle 2-core machine)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
CASEOPS = SHARED / "datasets" / "fineweb_legal_sp8192_caseops"
CASEOPS_TOKENIZER = SHARED / "tokenizers" / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
EVAL_TOKENS = 4096
LQER_TOP_K = 3
# 6 blocks, 64 wide: blocks 2-3 loop once training is half done, blocks 4-5 run parallel lanes.
TOY = ["model.model_dim=64", "model.num_layers=6", "model.num_heads=2", "model.num_kv_heads=1",
       "model.loop_start=2", "model.loop_end=3", "model.loop_enable_at=0.5", "model.parallel_start=4",
       "model.xsa_last_n=6", "model.compile=false",
       "run.iterations=6", "run.train_batch_tokens=2048", "run.train_seq_len=256", "run.accum_world=1",
       "run.max_wallclock_seconds=0", "run.train_log_every=2",
       "schedule.warmup_steps=2", "schedule.warmdown_iters=3",
       # Matrices this small sit under the default passthrough size; 1024 lets GPTQ see them all.
       "quant.small_numel=1024", "quant.calib_seqs=4", "quant.calib_batch_seqs=4",
       "quant.gptq_reserve_seconds=0", f"quant.lqer_top_k={LQER_TOP_K}",
       "eval.seq_len=256", f"eval.max_tokens={EVAL_TOKENS}", f"eval.batch_tokens={EVAL_TOKENS}",
       "eval.batch_seqs=4", "eval.audit_tokens=512", "eval.ttt_phased_prefix_docs=2"]


def sidecar_counts(shard: Path) -> np.ndarray:
    """The sidecar read straight from disk: 256 int32 header words, then one uint16 per token."""
    raw = np.fromfile(shard, dtype="<u2", offset=256 * 4)
    n = int(np.fromfile(shard, dtype="<i4", count=3)[2])
    assert raw.size == n
    return raw.astype(np.int64)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    for p in (CASEOPS / "fineweb_val_bytes_000000.bin", CASEOPS_TOKENIZER):
        if not p.is_file():
            pytest.skip(f"shared CaseOps data absent: {p.resolve()} (expected ../shared beside the checkout)")
    out = tmp_path_factory.mktemp("r1855") / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGOLF_", "RANK", "WORLD_SIZE"))}
    env.update(PYTHONPATH=str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               DATA_PATH=str(CASEOPS))
    env.pop("TOKENIZER_PATH", None)  # the CaseOps tokenizer must be found from DATA_PATH alone
    sets = [a for s in TOY for a in ("--set", s)]
    res = subprocess.run([sys.executable, "-m", "pgolf", "train", "--preset", "record_1855", "--out", str(out),
                          *sets], env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    return {"out": out, "stdout": res.stdout, "log": (out / "log.txt").read_text(), "metrics": metrics}


def test_run_reaches_its_final_val_bpb_line(run):
    last = run["stdout"].strip().splitlines()[-1]
    assert last.startswith("val_bpb:"), last
    m = run["metrics"]
    # bpb of a 6-step model sits near ln(8192)/ln(2) bits per token, far above 0 per byte.
    assert all(np.isfinite(m[k]) and m[k] > 1 for k in ("val_bpb", "pre_quant_val_bpb", "post_quant_plain_val_bpb"))
    assert Path(run["metrics"]["tokenizer_path"]).resolve() == CASEOPS_TOKENIZER.resolve()


def test_architecture_keeps_recurrence_and_parallel_lanes(run):
    assert "event:looping_on" in run["log"]
    names = {m["name"] for m in read_artifact(run["out"] / "model.ptz")[1]["manifest"]}
    assert any(n.startswith("parallel_") for n in names), sorted(names)[:20]


def test_gptq_quantized_every_block_matrix_and_lqer_is_shipped(run):
    assert "event:calibration" in run["log"]  # GPTQ's Hessians were collected
    manifest = read_artifact(run["out"] / "model.ptz")[1]["manifest"]
    block_matrices = [m for m in manifest if m["name"].startswith("blocks.") and m["name"].endswith(".weight")]
    assert block_matrices and all(m["method"].startswith("gptq") for m in block_matrices), \
        {m["name"]: m["method"] for m in block_matrices}
    # record_1855 stores #1855's asymmetric factors (int2 A, grouped int4 B).
    lqer = [m["name"] for m in manifest if m["method"] == "lqer_asym"]
    assert len(lqer) == 2 * LQER_TOP_K and all(n.endswith((".lqer_a", ".lqer_b")) for n in lqer), lqer


def test_final_eval_is_phased_ttt_charging_the_sidecar(run):
    m = run["metrics"]
    assert m["eval_mode"] == "phased-ttt"
    assert "eval:record-ttt phased" in run["log"]  # #1855's batched method, not pgolf's per-document one
    assert "eval:record-ttt phase:1/" in run["log"]  # a global phase ran
    assert "mode:phased-ttt" in [ln for ln in run["log"].splitlines() if ln.startswith("event:final")][-1]
    counts = sidecar_counts(CASEOPS / "fineweb_val_bytes_000000.bin")
    # Scored targets are tokens 1..EVAL_TOKENS; target i is charged the bytes of token i.
    assert m["val_tokens_scored"] == EVAL_TOKENS
    assert m["val_bytes_scored"] == int(counts[1:EVAL_TOKENS + 1].sum())
