#!/usr/bin/env bash
# Reproduce the CPU figures of docs/benchmarks.md, one measurement at a time (never two
# benchmarks at once on a shared machine). Results land in bench/results/ as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src
OUT=bench/results
RUN=${RUN:-runs/fineweb_small}
mkdir -p "$OUT"
REC="--set run.train_seq_len=256 --set run.train_batch_tokens=4096 --set run.accum_world=1 --set model.compile=false --steps 8 --warmup 2 --threads 2 --json"
python -m pgolf bench throughput --preset smoke --threads 2 --json > "$OUT/throughput_smoke.json"
python -m pgolf bench throughput --preset record_1128_fixed $REC > "$OUT/throughput_record_1128_fixed_t256.json"
# The shared small FineWeb model (about 10-40 minutes on 2 cores), then the measurements on it.
[ -f "$RUN/metrics.json" ] || bash bench/recipes/fineweb_small.sh "$RUN"
python -m pgolf bench eval "$RUN" \
  --modes sliding,slot,causal-slot,causal-slot-bias,causal-slot-carry,causal-slot-carry-bias,ttt,ttt+slot,ttt+causal-slot,ttt+causal-slot-carry-bias \
  --set eval.max_tokens=16384 --set eval.ttt_chunk_tokens=8192 --audit --threads 1 --json > "$OUT/slot_fineweb_small.json"
python -m pgolf bench quant "$RUN" --threads 1 --set quant.small_numel=8192 --set eval.max_tokens=16384 \
  --out "$OUT/quant_fineweb_small.json"
python -m pgolf bench quant "$RUN" --threads 1 --set quant.small_numel=8192 --set eval.max_tokens=16384 \
  --variant gptq_lite:matrix_method=gptq_lite,clip_rule=quantile,clip_search=matrix \
  --variant gptq_lite_int7:matrix_method=gptq_lite,clip_rule=quantile,clip_search=matrix,matrix_bits=7 \
  --variant gptq_sdclip:matrix_method=gptq,clip_rule=sdclip \
  --variant gptq_sdclip_k18:matrix_method=gptq,clip_rule=sdclip,sdclip_k_matrix=18 \
  --variant gptq_sdclip_k22:matrix_method=gptq,clip_rule=sdclip,sdclip_k_matrix=22 \
  --variant gptq_sdclip_k26:matrix_method=gptq,clip_rule=sdclip,sdclip_k_matrix=26 \
  --variant rtn_sdclip_k22:matrix_method=gptq_lite,clip_rule=sdclip,sdclip_k_matrix=22 \
  --out "$OUT/quant_equal_bytes_fineweb_small.json"
python -m pgolf plot "$RUN" --out docs/plots/fineweb_small_curves.png
# The frontier ablation (14 small trainings, about 40 minutes on 2 cores).
python bench/ablation.py runs/ablation
