"""The final evaluation of a run: plain bpb before and after quantization, the configured
eval mode on the round trip, and (when the caller supplies one) its legality audit."""

import time
from typing import Any, Callable

from pgolf.config_tree import Config
from pgolf.data.paths import ValData
from pgolf.dist import Comm
from pgolf.eval.bpb import eval_plain
from pgolf.eval.runner import EvalMode, evaluate
from pgolf.model.build import model_from_state
from pgolf.quant.export import load_round_trip
from pgolf.runlog import RunLog


def plain_whole_batch_windows(cfg: Config) -> int:
    """Windows per rank per plain-eval batch when eval.plain_whole_batches drops partial batches
    (the record's VAL_BATCH_TOKENS / (world * grad_accum) / seq_len), else 0 (score all)."""
    ec = cfg.eval
    return ec.batch_tokens // (cfg.run.accum_world * ec.seq_len) if ec.plain_whole_batches else 0


def _tagged(log: RunLog, phase: str) -> Callable[[str], None]:
    """log.line with `phase:NAME` appended, so a reader tells the evals of one run apart."""
    return lambda text: log.line(f"{text} phase:{phase}")


def final_evaluation(cfg: Config, state: dict, artifact: str, val: ValData, comm: Comm, device,
                     log: RunLog, auditor: Callable | None = None) -> dict[str, Any]:
    """Plain bpb before/after quantization, then the configured eval mode and its audit.

    `auditor` is pgolf.eval.legality.audit when the caller has it: the package's `pgolf
    train` passes it, a generated train_gpt.py does not ship it (the audit is a check of
    pgolf's, not part of a record run) and reports legal as unknown.
    """
    pre = model_from_state(cfg, state, device)
    ec = cfg.eval
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    whole = plain_whole_batch_windows(cfg)
    # Each eval's progress lines name what they measure: three evals can run on the same tokens.
    before = eval_plain(pre, val.tokens, ec.seq_len, ec.batch_tokens, val.tables, comm, device,
                        _tagged(log, "pre_quant"), whole_batch_windows=whole)
    del pre
    model = load_round_trip(artifact, cfg, device)
    after = eval_plain(model, val.tokens, ec.seq_len, ec.batch_tokens, val.tables, comm, device,
                       _tagged(log, "post_quant"), whole_batch_windows=whole)
    phases["quant_check_s"] = time.perf_counter() - t0
    log.event(event="quant_round_trip", pre_quant_val_bpb=round(before["val_bpb"], 5),
              post_quant_val_bpb=round(after["val_bpb"], 5),
              quant_penalty_bpb=round(after["val_bpb"] - before["val_bpb"], 5))
    mode = EvalMode.of(ec)
    if mode.name == "plain" and whole == 0 and not cfg.model.compile:
        # The configured mode is the plain eval just run on the same model, tokens and windows.
        log.line("eval:final mode:plain is the post_quant eval above (same model, tokens and windows): not run again")
        res = {**after, "mode": mode.name, "causal": mode.causal, "eval_seconds": after["seconds"]}
    else:
        res = evaluate(model, val.tokens, val.tables, ec, comm, device, _tagged(log, "final"),
                       compile=cfg.model.compile)
    phases["final_eval_s"] = res["eval_seconds"]
    phases.update({f"ttt_{k}": res[k] for k in ("score_seconds", "train_seconds") if k in res})
    out = {"val_loss": res["val_loss"], "val_bpb": res["val_bpb"], "eval_mode": res["mode"],
           "eval_causal": res["causal"], "eval_seconds": res["eval_seconds"],
           "val_tokens_scored": int(res["tokens"]), "val_bytes_scored": int(res["bytes"]),
           "pre_quant_val_bpb": before["val_bpb"], "post_quant_plain_val_bpb": after["val_bpb"],
           "quant_penalty_bpb": after["val_bpb"] - before["val_bpb"]}
    if ec.audit and auditor is not None:
        t0 = time.perf_counter()
        # The normalization check costs one eval per vocabulary id: on demand (`pgolf audit`).
        report = auditor(model, val.tokens, res["mode"], ec, val.tables, device, normalization=False,
                       progress=log.line)
        phases["audit_s"] = time.perf_counter() - t0
        log.line(report.summary())
        out.update(legal=bool(report.ok and res["causal"]),
                   audit={"causality": report.causality, "once": report.once,
                          "score_before_update": report.score_before_update})
    else:
        why = "eval.audit=false" if not ec.audit else "not shipped in train_gpt.py: run pgolf audit on the run"
        out.update(legal=None, audit=f"skipped ({why})")
    out["eval_phase_seconds"] = phases
    log.event(event="eval_time", **{k: round(v, 2) for k, v in phases.items()}, budget_s=ec.budget_seconds)
    log.event(event="final", val_loss=round(res["val_loss"], 5), val_bpb=round(res["val_bpb"], 5),
              mode=res["mode"], legal=out["legal"], tokens=int(res["tokens"]), bytes=int(res["bytes"]))
    return out
