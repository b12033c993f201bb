"""`pgolf bench eval`: a finished run's artifact evaluated in several modes, timed, with an
optional projection of each mode's time to another validation size and GPU count.

Not part of the shipped train_gpt.py. Projection: evaluation work grows linearly with the
scored tokens (sliding windows, TTT chunks and SLOT batches all do), and ranks split it
evenly, so projected seconds = measured seconds x project_tokens / slice tokens / GPUs. It
ignores the collectives of many ranks (TTT's gradient all-reduce per step) and assumes the
slice is representative; one-off costs (CUDA start-up, compilation) are kept out of the
measured seconds by an untimed warm-up of each mode on the slice's start.
"""

import dataclasses
import time
from typing import Any, Callable

from pgolf.errors import BenchError
from pgolf.config_tree import Config, EvalConfig
from pgolf.data.paths import load_val
from pgolf.dist import Comm
from pgolf.eval.legality import audit
from pgolf.eval.runner import EvalMode, evaluate
from pgolf.hw import pick_device
from pgolf.quant.export import load_round_trip

# The challenge's validation set: 62,021,632 scored tokens at 2048 (the challenge's fineweb_val set).
BENCH_FULL_VAL_TOKENS = 62_021_632


def bench_eval_projection(seconds: float, tokens: int, project_tokens: int, project_gpus: int) -> float:
    """Seconds for project_tokens scored tokens on project_gpus GPUs, from `seconds` for `tokens`."""
    if tokens <= 0 or project_tokens <= 0 or project_gpus <= 0:
        raise BenchError(f"projection needs positive token counts and GPUs, got {tokens} measured tokens, "
                         f"--project-tokens {project_tokens}, --project-gpus {project_gpus}")
    return seconds * project_tokens / tokens / project_gpus


def _eval_warm_config(ecfg: EvalConfig) -> EvalConfig:
    """The same mode on the slice's first two TTT chunks (or two full batches of windows):
    every code path of the timed run (compiled forwards, backward, optimizer) runs once."""
    if ecfg.ttt_enabled:
        span = 2 * ecfg.ttt_chunk_tokens
    elif ecfg.stride > 0:
        span = 2 * (ecfg.seq_len + ecfg.batch_seqs * ecfg.stride)
    else:
        span = 2 * max(ecfg.batch_tokens, ecfg.seq_len)
    if ecfg.max_tokens > 0:
        span = min(span, ecfg.max_tokens)
    return dataclasses.replace(ecfg, max_tokens=span, budget_seconds=0.0)


def bench_eval(cfg: Config, artifact: str, modes: list[str], log: Callable[[str], None] | None = None,
               run_audit: bool = False, project_tokens: int = 0, project_gpus: int = 1,
               warmup: bool | None = None) -> list[dict[str, Any]]:
    """Evaluate the round-tripped artifact in each mode; one row per mode. With run_audit, each
    mode also gets the legality audit (causality, scored once, score before update) on the
    first eval.audit_tokens targets; legal = audit passed and the mode is causal. With
    project_tokens, each row adds the projected seconds (see the module doc). warmup (default:
    on a GPU or with model.compile) runs each mode untimed on the slice's start first."""
    parsed = {mode: EvalMode.parse(mode) for mode in modes}  # an unknown name fails before the model loads
    if project_tokens:
        bench_eval_projection(1.0, 1, project_tokens, project_gpus)  # bad numbers fail up front too
    device = pick_device(cfg.run.device)
    comm = Comm(device)
    val = load_val(cfg, device)
    model = load_round_trip(artifact, cfg, device)
    if warmup is None:
        warmup = device.type == "cuda" or cfg.model.compile
    rows = []
    for mode in modes:
        ecfg = parsed[mode].eval_config(cfg.eval)
        warm_s = None
        if warmup:
            t0 = time.perf_counter()
            evaluate(model, val.tokens, val.tables, _eval_warm_config(ecfg), comm, device,
                     None, compile=cfg.model.compile)
            warm_s = time.perf_counter() - t0
        res = evaluate(model, val.tokens, val.tables, ecfg, comm, device, log, compile=cfg.model.compile)
        row = {"mode": mode, "runner_mode": res["mode"], "val_bpb": res["val_bpb"], "val_loss": res["val_loss"],
               "tokens": res["tokens"], "stride": ecfg.stride, "seconds": res["eval_seconds"],
               "causal": res["causal"], "legal": None, "warmup_seconds": warm_s}
        row.update({k: res[k] for k in ("score_seconds", "train_seconds") if k in res})
        if project_tokens:
            row.update(project_tokens=project_tokens, project_gpus=project_gpus,
                       projected_seconds=bench_eval_projection(res["eval_seconds"], res["tokens"],
                                                               project_tokens, project_gpus))
        if run_audit:
            t0 = time.perf_counter()
            report = audit(model, val.tokens, mode, cfg.eval, val.tables, device, normalization=False)
            row.update(legal=bool(report.ok and res["causal"]), audit=report.summary(),
                       audit_seconds=time.perf_counter() - t0)
        rows.append(row)
    return rows


def format_eval(rows: list[dict[str, Any]]) -> str:
    projected = any("projected_seconds" in r for r in rows)
    head = "| mode | val_bpb | seconds | causal | legal (audit) | tokens | stride |"
    rule = "|---|---:|---:|---|---|---:|---:|"
    if projected:
        r0 = next(r for r in rows if "projected_seconds" in r)
        head += f" projected s ({r0['project_tokens']:,} tokens / {r0['project_gpus']} GPUs) |"
        rule += "---:|"
    out = [head, rule]
    for r in rows:
        legal = "not audited" if r["legal"] is None else ("PASS" if r["legal"] else "FAIL")
        line = (f"| {r['mode']} | {r['val_bpb']:.4f} | {r['seconds']:.1f} | "
                f"{'yes' if r['causal'] else 'NO'} | {legal} | {r['tokens']:,} | {r['stride']} |")
        if projected:
            line += f" {r['projected_seconds']:.1f} |" if "projected_seconds" in r else " |"
        out.append(line)
    return "\n".join(out)
