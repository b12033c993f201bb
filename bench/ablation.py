"""CPU ablation of the frontier techniques on the FineWeb sample.

Trains the record_1128 stack at one small scale for a fixed number of steps, once per row:
the base, the base plus one technique, every technique together, and the base with a second
seed (the seed noise). Same data, seed and steps everywhere; directional only.

Usage: PYTHONPATH=src python bench/ablation.py OUT_DIR [--rows a,b] [--results PATH] [--markdown]
Rows already in the results JSON are skipped, so the command resumes and takes new rows.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "ablation_fineweb_small.json"
DATA = os.environ.get("DATA", "../shared/data/datasets/fineweb_legal_sp1024")
TOK = os.environ.get("TOK", "../shared/data/tokenizers/fineweb_1024_bpe.model")
STEPS = 150
THREADS = os.environ.get("ABLATION_THREADS", "1")

# One small scale: 6 layers of width 128 (2 heads of 64, 1 KV head) so a run takes minutes on
# a shared 2-core box; value embeddings on the last two blocks as the record's 9,10 of 11.
BASE_SETS = [
    "model.model_dim=128", "model.num_heads=2", "model.num_kv_heads=1", "model.num_layers=6",
    "model.ve_layers=4,5", "model.ve_dim=64", "model.bigram_dim=64", "model.compile=false",
    "run.train_seq_len=256", "run.train_batch_tokens=4096", "run.accum_world=1",
    f"run.iterations={STEPS}", "run.max_wallclock_seconds=0", "run.train_log_every=25",
    "schedule.warmup_steps=2", "schedule.warmdown_iters=60", "schedule.warmdown_mode=iters",
    "optim.muon_momentum_warmup_steps=75", "schedule.swa_every=10",
    "eval.seq_len=256", "eval.max_tokens=65536", "eval.stride=64", "eval.batch_tokens=65536",
    "eval.ttt_enabled=false", "eval.slot_mode=off", "eval.audit=false",
]

# Each technique with #1855's settings scaled from 11 blocks to 6.
TECHNIQUES: dict[str, list[str]] = {
    # blocks 2-3 run three times once 35% of training is done (#1855: 3-5 of 11)
    "depth_recurrence": ["model.num_loops=2", "model.loop_start=2", "model.loop_end=3",
                         "model.loop_enable_at=0.35"],
    # the last third in parallel lanes (#1855: from block 8 of 11)
    "parallel_residual": ["model.parallel_start=4", "model.parallel_final=mean"],
    "skip_gates": ["model.skip_gates=true"],
    "sparse_attn_gate": ["model.attn_gate=sparse", "model.attn_gate_scale=0.5"],
    "input_smear_bos_fix": ["model.smear_kind=input", "model.smear_bos_fix=true"],
    "doc_mask": ["model.doc_mask=true"],
    "muoneq_r": ["optim.muon_row_norm=true"],
    "polar_express": ["optim.muon_coeffs=polar_express"],
    "min_lr_floor": ["schedule.min_lr_mult=0.10"],
    # Muon WD falls to half from 70% of training (#1729)
    "wd_taper": ["schedule.wd_taper_start=0.7", "schedule.wd_taper_final_mult=0.5"],
    # seeded coprime-stride window order instead of reading the shard in turn (#1058)
    "coprime_loader": ["data.sampling=coprime"],
}


def ablation_rows() -> list[tuple[str, list[str]]]:
    """(name, overrides on top of BASE_SETS) in run order."""
    rows = [("base", [])] + list(TECHNIQUES.items())
    rows.append(("all", [s for sets in TECHNIQUES.values() for s in sets]))
    rows.append(("base_seed2", ["run.seed=2024"]))
    return rows


def train_command(out: Path, sets: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pgolf", "train", "--preset", "record_1128", "--out", str(out),
           "--set", f"data.path={DATA}", "--set", f"data.tokenizer_path={TOK}"]
    for s in BASE_SETS + sets:
        cmd += ["--set", s]
    return cmd


def row_entry(name: str, sets: list[str], metrics: dict, wall_s: float) -> dict:
    return {
        "name": name, "overrides": sets, "params": metrics["params"], "steps": metrics["steps"],
        "val_bpb_float": metrics["pre_quant_val_bpb"],
        "val_bpb_quant": metrics["post_quant_plain_val_bpb"],
        "val_bpb_final": metrics["val_bpb"], "artifact_bytes": metrics["artifact_bytes"],
        "train_time_s": metrics["train_time_s"], "wall_time_s": wall_s, "seed": metrics["seed"],
    }


def add_deltas(entries: list[dict]) -> None:
    base = next((e for e in entries if e["name"] == "base"), None)
    for e in entries:
        for k in ("float", "quant"):
            e[f"delta_{k}"] = None if base is None else e[f"val_bpb_{k}"] - base[f"val_bpb_{k}"]


def run_row(out_root: Path, name: str, sets: list[str]) -> dict | None:
    out = out_root / name
    metrics_path = out / "metrics.json"
    wall = 0.0
    if not metrics_path.is_file():
        out_root.mkdir(parents=True, exist_ok=True)
        # pgolf refuses a non-empty folder that is not a run, so the console log sits beside
        # the run folder until the run made it, then moves in.
        console = out_root / f"{name}.console.log"
        # One thread: on a shared 2-core box two threads thrash against any other job (6 s steps
        # instead of 0.5 s); every row runs the same way, so the thread count is no variable.
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS=THREADS)
        t0 = time.perf_counter()
        with open(console, "w") as log:
            rc = subprocess.call(train_command(out, sets), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        if out.is_dir():
            os.replace(console, out / "console.log")
            console = out / "console.log"
        if rc != 0 or not metrics_path.is_file():
            # moved aside, so a rerun of the command starts this row afresh
            failed = out_root / f"{name}.failed-{int(time.time())}"
            os.replace(out if out.is_dir() else console, failed)
            print(f"[ablation] {name} failed (rc {rc}); see {failed}", flush=True)
            return None
    metrics = json.loads(metrics_path.read_text())
    return row_entry(name, sets, metrics, wall or metrics["wall_time_s"])


def markdown_table(entries: list[dict]) -> str:
    """The docs/benchmarks.md table of the results (4 decimals, as tests/test_ablation_recipe.py reads it)."""
    lines = ["| row | params | val_bpb float | Δ float | val_bpb int6 | Δ int6 | sliding int6 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for e in entries:
        d = [f"{e[k]:+.4f}" if e[k] is not None else "n/a" for k in ("delta_float", "delta_quant")]
        lines.append(f"| `{e['name']}` | {e['params']:,} | {e['val_bpb_float']:.4f} | {d[0]} | "
                     f"{e['val_bpb_quant']:.4f} | {d[1]} | {e['val_bpb_final']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder for the run folders (outside the repo)")
    p.add_argument("--rows", default="", help="comma list of row names; empty = all")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--markdown", action="store_true", help="print the results as the docs table; train nothing")
    args = p.parse_args(argv)
    results = Path(args.results)
    entries = json.loads(results.read_text())["rows"] if results.is_file() else []
    if args.markdown:
        print(markdown_table(entries))
        return 0
    wanted = set(filter(None, args.rows.split(",")))
    for name, sets in ablation_rows():
        if (wanted and name not in wanted) or any(e["name"] == name for e in entries):
            continue
        print(f"[ablation] {name}: {' '.join(sets) or '(base)'}", flush=True)
        entry = run_row(Path(args.out), name, sets)
        if entry is None:
            continue
        entries.append(entry)
        add_deltas(entries)
        results.parent.mkdir(parents=True, exist_ok=True)
        doc = {"preset": "record_1128", "threads": THREADS, "base_sets": BASE_SETS, "data": DATA, "tokenizer": TOK, "rows": entries}
        tmp = results.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, results)  # a kill mid-write never leaves half a results file
        print(f"[ablation] {name}: float {entry['val_bpb_float']:.5f} quant {entry['val_bpb_quant']:.5f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
