"""What run.low_precision=auto does on a CPU without native bf16, on a machine that has it.

    PYTHONPATH=src python bench/precision_avx2.py [--preset smoke] [--steps 3] [--warmup 1] [--json]

Forces `pgolf.hw.cpu_has_native_bf16` to answer False (the AVX2-only decision), then times
three twins of the preset with their steps alternating, as `pgolf bench throughput --precision
both` does: `auto` (which now resolves to fp32), `fp32` and `bf16` (the shipped numerics before
the switch). Prints each one's precision line and median ms/step, and auto/fp32 and bf16/fp32.
On a machine with native bf16 the bf16 row is not the AVX2 cost: there bf16 is emulated.
"""

import argparse
import dataclasses
import json
import statistics

import pgolf.hw
from pgolf.bench import ThroughputRun
from pgolf.config import resolve_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pgolf.hw.cpu_has_native_bf16 = lambda *a: False
    cfg, _ = resolve_config(args.preset, None, {}, [])
    runs = {p: ThroughputRun(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, low_precision=p)), 0, "off")
            for p in ("auto", "fp32", "bf16")}
    for run in runs.values():
        run.steps(args.warmup, timed=False)
    for _ in range(args.steps):
        for run in runs.values():
            run.steps(1)
    out = {p: {"median_ms": statistics.median(r.times), "times_ms": r.times,
               "precision": r.precision.fields(cfg.model.embed_dtype)} for p, r in runs.items()}
    out["auto_over_fp32"] = out["auto"]["median_ms"] / out["fp32"]["median_ms"]
    out["bf16_over_fp32"] = out["bf16"]["median_ms"] / out["fp32"]["median_ms"]
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for p in runs:
        fields = " ".join(f"{k}={v}" for k, v in out[p]["precision"].items())
        print(f"{p}: median {out[p]['median_ms']:.1f} ms/step  ({fields})")
    print(f"auto / fp32: {out['auto_over_fp32']:.2f}x   bf16 / fp32: {out['bf16_over_fp32']:.2f}x")


if __name__ == "__main__":
    main()
