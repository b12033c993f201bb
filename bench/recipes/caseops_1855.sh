#!/usr/bin/env bash
# record_1855 at reduced width on the shared CaseOps sample (../shared/data), trained and
# evaluated on CPU: 11 blocks with the record's recurrence (blocks 3-5 loop from 35 % of
# training) and parallel lanes (from block 8), GPTQ + SDClip + int7 embed + LQER as the
# preset sets them, phased LoRA TTT charging the byte sidecar. The float weights
# (final_state.pt) feed the quantization table of caseops_1855_quant.sh.
# Usage: bash bench/recipes/caseops_1855.sh OUT_DIR
#   DIM (192), HEADS (6), KV_HEADS (3), STEPS (200), SEQ (512), BATCH (8192 tokens/step),
#   EVAL_TOKENS (32768) size it; minutes per 10 steps on 2 cores at the defaults, so
#   STEPS=100 DIM=128 HEADS=4 KV_HEADS=2 is the quick form.
set -euo pipefail
# DRY_RUN=1 prints the command instead of running it.
cd "$(dirname "$0")/../.."
OUT=${1:?give the run folder to write}
DATA=${DATA:-../shared/data/datasets/fineweb_legal_sp8192_caseops}
TOK=${TOK:-../shared/data/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model}
STEPS=${STEPS:-200}
# The preset's WARMDOWN_FRAC 0.85 runs on steps/iterations without a wall-clock cap; Muon's
# momentum ramp over the first half.
MOMENTUM_RAMP=$(( STEPS / 2 ))
PYTHONPATH=src ${DRY_RUN:+echo} python -m pgolf train --preset record_1855 --out "$OUT" \
  --set data.path="$DATA" --set data.tokenizer_path="$TOK" \
  --set model.model_dim=${DIM:-192} --set model.num_heads=${HEADS:-6} --set model.num_kv_heads=${KV_HEADS:-3} \
  --set model.compile=false \
  --set run.train_seq_len=${SEQ:-512} --set run.train_batch_tokens=${BATCH:-8192} --set run.accum_world=1 \
  --set run.iterations=$STEPS --set run.max_wallclock_seconds=0 --set run.train_log_every=10 \
  --set schedule.warmup_steps=2 \
  --set optim.muon_momentum_warmup_steps=$MOMENTUM_RAMP \
  --set quant.small_numel=8192 --set quant.gptq_reserve_seconds=0 \
  --set quant.calib_seqs=16 --set quant.calib_batch_seqs=4 \
  --set eval.seq_len=${SEQ:-512} --set eval.max_tokens=${EVAL_TOKENS:-32768} \
  --set eval.batch_tokens=${EVAL_TOKENS:-32768} \
  --set eval.ttt_phased_prefix_docs=12 --set eval.audit=false
