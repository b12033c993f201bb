#!/usr/bin/env bash
# The quantization table of a caseops_1855.sh run: record #1855's pipeline (the run's own quant
# section written out: GPTQ + SDClip with per-group k, int7 embed GPTQ, LQER asym rank 4 on the top 3
# tensors, int8 gate rows)
# beside its ablations and the alternatives at (near) equal bytes: GPTQ + SDClip without LQER
# with k scaled down so its codes spend LQER's bytes, round-to-nearest SDClip likewise, and
# GPTQ-lite at int6 and int7 bracketing the bytes. Plain bpb on the first 16,384 val tokens.
# Usage: bash bench/recipes/caseops_1855_quant.sh RUN_DIR [OUT_JSON]
set -euo pipefail
# DRY_RUN=1 prints the command instead of running it.
cd "$(dirname "$0")/../.."
RUN=${1:?give the run folder of caseops_1855.sh}
OUT=${2:-bench/results/quant_equal_bytes_caseops_1855.json}
# The record's pipeline spelled out, so the row is the record's whatever the run's preset says.
RECORD="matrix_method=gptq,clip_rule=sdclip,matrix_bits=6,sdclip_k_matrix=12.85,sdclip_k_embed=14.0,embed_bits=7"
RECORD+=",sdclip_k_attn=13.0,sdclip_k_mlp=11.5,sdclip_std=unbiased,gptq_numerics=record,gate_int8=true"
RECORD+=",gptq_embed=true,lqer_rank=4,lqer_top_k=3,lqer_bits=4,lqer_format=asym,lqer_asym_group=64"
scaled_k() {  # multiplier -> every SDClip k of the matrices scaled
  awk -v m="$1" 'BEGIN { printf "sdclip_k_matrix=%.4g,sdclip_k_attn=%.4g,sdclip_k_mlp=%.4g", 12.85*m, 13.0*m, 11.5*m }'
}
NO_EXTRAS="gptq_embed=false,lqer_rank=0"
LITE="matrix_method=gptq_lite,clip_rule=quantile,clip_search=matrix,$NO_EXTRAS"
VARIANTS=(
  "record:$RECORD"
  "record_no_lqer:$RECORD,lqer_rank=0"
  "record_embed_rtn:$RECORD,gptq_embed=false"
  "record_lqer_pgolf:$RECORD,lqer_format=pgolf"
  "gptq_sdclip_k0.97:$RECORD,lqer_rank=0,$(scaled_k 0.97)"
  "gptq_sdclip_k0.94:$RECORD,lqer_rank=0,$(scaled_k 0.94)"
  "gptq_sdclip_k0.90:$RECORD,lqer_rank=0,$(scaled_k 0.90)"
  "rtn_sdclip:$RECORD,matrix_method=gptq_lite,$NO_EXTRAS"
  "rtn_sdclip_k1.10:$RECORD,matrix_method=gptq_lite,$NO_EXTRAS,$(scaled_k 1.10)"
  "gptq_lite:$RECORD,$LITE"
  "gptq_lite_int7:$RECORD,$LITE,matrix_bits=7"
)
ARGS=()
for v in "${VARIANTS[@]}"; do ARGS+=(--variant "$v"); done
PYTHONPATH=src ${DRY_RUN:+echo} python -m pgolf bench quant "$RUN" --threads ${THREADS:-2} --verbose \
  --set quant.small_numel=8192 --set eval.max_tokens=${EVAL_TOKENS:-16384} "${ARGS[@]}" --out "$OUT"
