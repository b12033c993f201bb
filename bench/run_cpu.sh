#!/usr/bin/env bash
# Reproduce the CPU figures of docs/benchmarks.md, one measurement at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src
TOK=/work/shared/data/tokenizers/fineweb_1024_bpe.model
RUN=${RUN:-/tmp/pgolf_bench_run}
python -m pgolf bench throughput --preset smoke --threads 2
python -m pgolf bench throughput --preset record_1128 --set run.train_seq_len=1024 \
  --set run.train_batch_tokens=8192 --set run.accum_world=1 --set model.compile=false \
  --steps 5 --warmup 1 --threads 2
python -m pgolf bench artifact --preset record_1128 --threads 2
python -m pgolf data prepare --tokenizer "$TOK"
[ -f "$RUN/metrics.json" ] || python -m pgolf train --preset smoke --set model.arch=record \
  --set data.tokenizer_path="$TOK" --set run.iterations=300 --set eval.max_tokens=16384 --out "$RUN"
python -m pgolf bench eval "$RUN" --modes plain,sliding,ttt,ttt+slot,ttt+causal-slot \
  --set eval.stride=64 --set eval.max_tokens=0 --threads 2 --audit
