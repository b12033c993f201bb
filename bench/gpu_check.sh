#!/usr/bin/env bash
# The GPU questions in one run (a 420 s deadline, GPU_CHECK_BUDGET_S; results go to docs/benchmarks.md):
#   (a) the CUDA tests, tests/gpu (bf16 numerics, SDPA kernels, compile + late QAT, NCCL,
#       eval modes, artifact, pinned loader, a tiny `pgolf train`)
#   (b) training throughput of record_1128 compiled: 48x2048 tokens per step (one GPU's share
#       of the record's batch), then the whole 786,432-token batch with accumulation 8
#   (c) a real 300-step record_1128 run on data/ (FineWeb sample), export, round-trip eval
#   (d) each eval phase timed on a slice of that run's validation tokens, projected to the
#       full 62,021,632-token validation set on 8 GPUs
#   (k) pgolf's Triton kernels (fused soft-capped CE, fused up-projection + leaky_relu^2) against
#       eager at record #1855's shapes in bf16 (bench/kernels_check.py: ms, max error), then
#       record_1855's compiled step time at 98,304 tokens with the kernels on and off; it runs
#       last, on what the budget leaves (GPU_CHECK_STEPS=a,k runs the tests and it alone)
# Usage: bash bench/gpu_check.sh [--dry-run]
#   --dry-run   list the steps and run (a) only (on a CPU every test is skipped)
# Results go to $OUT (else ./gpu_check_out): gpu_check.json (everything), gpu_check.log,
# junit_gpu.xml, gpu_tests_report.json, train_log.txt; scratch (run folder, compile caches)
# to $GPU_CHECK_WORK (else a temp folder when $OUT is set, ./gpu_check_out/work otherwise),
# so $OUT stays a handful of files. Runs the machine's own python3 (PYTHON=...) with
# PYTHONPATH=src: nothing is installed.
# Steps (c) and (d) read the git-ignored data/ folder; fill it from ../shared/data first:
#   mkdir -p data/datasets data/tokenizers
#   cp -r ../shared/data/datasets/fineweb_legal_sp1024 data/datasets/
#   cp ../shared/data/tokenizers/fineweb_1024_bpe.model data/tokenizers/
# Knobs: GPU_CHECK_BUDGET_S (420: the whole run's deadline), GPU_CHECK_STEPS (a,b,c,d,k),
# GPU_CHECK_PYTEST_ARGS (-x -q), PGOLF_COMMIT (the commit, when the checkout has no .git),
# GPU_CHECK_SETS / GPU_CHECK_EVAL_SETS ("section.field=value ..." appended as --set to the
# (b)+(c)+(k) / (d) commands), GPU_CHECK_DATA / GPU_CHECK_TOKENIZER, and GPU_CHECK_ALLOW_CPU=1
# (rehearse the plumbing on a CPU with tiny GPU_CHECK_SETS; its numbers mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PGOLF_TRACEBACK=1   # a failing pgolf command shows where, not one line

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

OUTDIR=${OUT:-gpu_check_out}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
TEMP_WORK=0
if [ -n "${GPU_CHECK_WORK:-}" ]; then
  WORK=$GPU_CHECK_WORK
elif [ -n "${OUT:-}" ]; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgolf_gpu_check.XXXXXX")
  TEMP_WORK=1
else
  WORK=$OUTDIR/work
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
: >"$WORK/steps.jsonl"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$WORK/inductor_cache}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$WORK/triton_cache}

BUDGET=${GPU_CHECK_BUDGET_S:-420}
STEPS=${GPU_CHECK_STEPS:-a,b,c,d,k}
PYTEST_ARGS=${GPU_CHECK_PYTEST_ARGS:--x -q}
DATA=${GPU_CHECK_DATA:-data/datasets/fineweb_legal_sp1024}
TOKENIZER=${GPU_CHECK_TOKENIZER:-data/tokenizers/fineweb_1024_bpe.model}
RUN=$WORK/run
EVAL_SLICE=131072   # 4 TTT chunks of 32,768: scoring, training and the untrained last chunk
START=$(date +%s)
FAILED=0
SETS=(); EVAL_SETS=()
for kv in ${GPU_CHECK_SETS:-}; do SETS+=(--set "$kv"); done
for kv in ${GPU_CHECK_EVAL_SETS:-}; do EVAL_SETS+=(--set "$kv"); done

# Each step: its cap (seconds) and the least later steps need, so a slow step cannot eat them.
declare -A CAP=([a]=170 [b1]=110 [b2]=60 [c]=150 [d]=90 [k1]=60 [k2]=90 [k3]=90)
declare -A RESERVE_AFTER=([a]=210 [b1]=160 [b2]=120 [c]=40 [d]=0 [k1]=0 [k2]=0 [k3]=0)

describe() {
  cat <<EOF
gpu_check steps (budget ${BUDGET} s; results in $OUTDIR, scratch in $WORK):
  (a) [cap ${CAP[a]} s] CUDA tests: $PY -m pytest -m gpu $PYTEST_ARGS tests/gpu
  (b) [cap ${CAP[b1]} + ${CAP[b2]} s] throughput of record_1128 compiled: 48x2048 tokens/step with
      accumulation 1, then 786,432 tokens/step with accumulation 8 (the 1-GPU global batch)
  (c) [cap ${CAP[c]} s] 300-step record_1128 run on $DATA, export, round-trip eval
  (d) [cap ${CAP[d]} s] eval phases (sliding, ttt, ttt+causal-slot, ttt+slot) on a ${EVAL_SLICE}-token
      slice of (c)'s validation tokens, projected to 62,021,632 tokens on 8 GPUs
  (k) [cap ${CAP[k1]} + ${CAP[k2]} + ${CAP[k3]} s, on what is left] bench/kernels_check.py (each Triton
      kernel vs eager at record_1855 shapes, bf16), then record_1855 compiled at 98,304 tokens/step
      with model.fused_ce/fused_mlp on, then off
EOF
}

note_step() {  # step status seconds timeout note
  "$PY" - "$WORK/steps.jsonl" "$@" <<'EOF'
import json, sys
path, step, status, seconds, timeout, note = sys.argv[1:7]
with open(path, "a") as f:
    f.write(json.dumps({"step": step, "status": status, "seconds": float(seconds),
                        "timeout_s": int(timeout) if timeout else None, "note": note or None}) + "\n")
EOF
}

wanted() { [[ ",$STEPS," == *",${1:0:1},"* ]]; }

# run_step NAME OUTFILE CMD...: stdout to OUTFILE (or the log when "-"), under its timeout.
run_step() {
  local name=$1 outfile=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - ${RESERVE_AFTER[$name]} ))
  local t=${CAP[$name]}
  (( left < t )) && t=$left
  if (( t < 15 )); then
    echo "== ($name) skipped: ${t}s left of the ${BUDGET}s budget"
    note_step "$name" skipped 0 "" "budget spent"
    return 0
  fi
  echo "== ($name) $* [timeout ${t}s]"
  local t0=$(date +%s) rc=0
  if [ "$outfile" = "-" ]; then
    timeout --kill-after=15 "$t" "$@" || rc=$?
  else
    timeout --kill-after=15 "$t" "$@" >"$outfile" || rc=$?
  fi
  local dt=$(( $(date +%s) - t0 )) status=ok
  if (( rc == 124 || rc == 137 )); then status=timeout; elif (( rc != 0 )); then status=failed; fi
  [ "$status" = ok ] || FAILED=1
  echo "== ($name) $status (exit $rc) in ${dt}s"
  note_step "$name" "$status" "$dt" "$t" "exit $rc"
}

skip_step() {  # name reason
  echo "== ($1) skipped: $2"
  note_step "$1" skipped 0 "" "$2"
}

main() {
  describe
  if (( ! DRY )) && [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device visible to $PY: run with --dry-run on a CPU" >&2
    return 2
  fi
  "$PY" bench/gpu_check.py env || true

  if wanted a; then
    export PGOLF_GPU_REPORT=$OUTDIR
    # shellcheck disable=SC2086  # PYTEST_ARGS is a list of flags
    run_step a - "$PY" -m pytest -m gpu $PYTEST_ARGS -rA -p no:cacheprovider \
      --junitxml="$OUTDIR/junit_gpu.xml" tests/gpu
  fi
  if (( DRY )); then
    for s in b c d k; do skip_step "$s" "dry run"; done
  else
    if wanted b; then
      run_step b1 "$WORK/throughput_accum1.json" "$PY" -m pgolf bench throughput --preset record_1128 \
        --set run.accum_world=1 --set run.train_batch_tokens=98304 --steps 30 --warmup 5 --json "${SETS[@]}"
      run_step b2 "$WORK/throughput_accum8.json" "$PY" -m pgolf bench throughput --preset record_1128 \
        --set run.accum_world=8 --set run.train_batch_tokens=786432 --steps 5 --warmup 1 --json "${SETS[@]}"
    fi
    if wanted c || wanted d; then
      if [ ! -f "$DATA/fineweb_val_000000.bin" ] || [ ! -f "$TOKENIZER" ]; then
        local msg="missing $DATA/ or $TOKENIZER in this checkout: before the run, mkdir -p data/datasets data/tokenizers && cp -r ../shared/data/datasets/fineweb_legal_sp1024 data/datasets/ && cp ../shared/data/tokenizers/fineweb_1024_bpe.model data/tokenizers/ (data/ is git-ignored: carry it to the GPU machine)"
        wanted c && skip_step c "$msg"
        wanted d && skip_step d "$msg"
      else
        if wanted c; then
          rm -rf "$RUN"
          # The micro-batch of (b1), so its compiled graphs come from the inductor cache.
          # 300 steps end in a 100-step warmdown (late QAT in its last 15%); EMA 0.98 averages
          # ~50 steps (0.997 would still hold the initial weights after 300). Sliding-window
          # eval here; (d) times the TTT and SLOT phases.
          run_step c - "$PY" -m pgolf train --preset record_1128 --out "$RUN" \
            --set data.path="$DATA" --set data.tokenizer_path="$TOKENIZER" \
            --set run.iterations=300 --set run.accum_world=1 --set run.train_batch_tokens=98304 \
            --set run.max_wallclock_seconds=100 --set run.train_log_every=50 \
            --set schedule.warmup_steps=3 --set schedule.warmdown_iters=100 --set schedule.ema_decay=0.98 \
            --set optim.muon_momentum_warmup_steps=100 \
            --set eval.ttt_enabled=false --set eval.slot_mode=off --set eval.stride=64 --set eval.max_tokens=262144 "${SETS[@]}"
          [ -f "$RUN/log.txt" ] && cp "$RUN/log.txt" "$OUTDIR/train_log.txt"
        fi
        if wanted d; then
          if [ -f "$RUN/model.ptz" ]; then
            run_step d "$WORK/eval_phases.json" "$PY" -m pgolf bench eval "$RUN" \
              --modes sliding,ttt,ttt+causal-slot,ttt+slot --set eval.max_tokens=$EVAL_SLICE \
              --project-tokens 62021632 --project-gpus 8 --json "${EVAL_SETS[@]}"
          else
            skip_step d "no $RUN/model.ptz: step (c) did not finish"
          fi
        fi
      fi
    fi
    if wanted k; then
      run_step k1 "$WORK/kernels.json" "$PY" bench/kernels_check.py --json
      for sw in on off; do
        local k=k2; [ "$sw" = off ] && k=k3
        run_step "$k" "$WORK/throughput_1855_kernels_$sw.json" "$PY" -m pgolf bench throughput --preset record_1855 \
          --set model.fused_ce=$sw --set model.fused_mlp=$sw --set run.accum_world=1 \
          --set run.train_batch_tokens=98304 --steps 20 --warmup 5 --json "${SETS[@]}"
      done
    fi
  fi
  echo "== summary"
  "$PY" bench/gpu_check.py gather "$OUTDIR" "$WORK" "$BUDGET"
  return $FAILED
}

set -o pipefail
rc=0
main 2>&1 | tee "$OUTDIR/gpu_check.log" || rc=$?
# A dry run leaves nothing behind; a real run keeps its scratch (the run folder) for a look.
if (( DRY && TEMP_WORK )); then rm -rf "$WORK"; fi
exit "$rc"
