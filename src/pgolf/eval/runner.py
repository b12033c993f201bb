"""One entry point for the configured evaluation mode, and the audit's mode names."""

import dataclasses
import time
from typing import Any, Callable

import torch

from pgolf.config_tree import EvalConfig
from pgolf.dist import Comm
from pgolf.eval.batched_lora import eval_record_ttt
from pgolf.eval.bpb import EvalInputError, ScoreRecorder, eval_plain, val_tokens_tensor
from pgolf.eval.forward import Forwards, PlainScorer
from pgolf.eval.lora_ttt import eval_lora_ttt
from pgolf.eval.phased_ttt import eval_phased_ttt
from pgolf.eval.sliding import eval_sliding
from pgolf.eval.slot import make_slot_scorer
from pgolf.eval.ttt import eval_ttt

# Audit / CLI mode names -> (stride needed, ttt_enabled, slot_mode).
EVAL_MODES: dict[str, tuple[bool, bool, str]] = {
    "plain": (False, False, "off"),
    "sliding": (True, False, "off"),
    "ttt": (True, True, "off"),
    "slot": (True, False, "batch"),
    "causal-slot": (True, False, "causal"),
    "ttt+slot": (True, True, "batch"),
    "ttt+causal-slot": (True, True, "causal"),
    "lora-ttt": (False, True, "off"),
    "phased-ttt": (False, True, "off"),
}
# Runner names (what evaluate() reports) that are not audit names themselves.
EVAL_MODE_ALIASES = {"sliding+slot": "slot", "sliding+causal-slot": "causal-slot",
                     "plain+slot": "slot", "plain+causal-slot": "causal-slot"}
EVAL_DEFAULT_STRIDE = 64
# Per-document TTT modes -> eval.ttt_kind; every other mode runs the global (#549) TTT.
EVAL_TTT_KINDS = {"lora-ttt": "lora", "phased-ttt": "phased"}
# Causal SLOT variants (issue 15): name suffix -> EvalConfig fields; "causal-slot" alone is the
# per-window SLOT with both off. Every name exists with and without "ttt+".
SLOT_VARIANTS: dict[str, dict[str, bool]] = {
    "": {"slot_carry": False, "slot_bias": False},
    "-carry": {"slot_carry": True, "slot_bias": False},
    "-bias": {"slot_carry": False, "slot_bias": True},
    "-carry-bias": {"slot_carry": True, "slot_bias": True},
}


def slot_variant_of(mode: str) -> tuple[str, dict[str, bool]]:
    """(audit mode, SLOT fields) of a mode name; a causal-slot variant maps to its base mode."""
    for prefix in ("sliding+", "plain+"):
        if mode.startswith(prefix + "causal-slot"):
            mode = mode[len(prefix):]
    for suffix, fields in sorted(SLOT_VARIANTS.items(), key=lambda kv: -len(kv[0])):
        for base in ("causal-slot", "ttt+causal-slot"):
            if suffix and mode == base + suffix:
                return base, fields
    if mode in ("causal-slot", "ttt+causal-slot"):
        return mode, SLOT_VARIANTS[""]
    if mode in ("slot", "ttt+slot") or EVAL_MODE_ALIASES.get(mode) == "slot":
        return mode, SLOT_VARIANTS[""]
    return mode, {}


def eval_mode_name(ecfg: EvalConfig) -> str:
    """plain | sliding | ttt | lora-ttt | phased-ttt, plus +slot (NON-CAUSAL batch SLOT) or
    +causal-slot."""
    base = "ttt" if ecfg.ttt_enabled else ("sliding" if ecfg.stride > 0 else "plain")
    if ecfg.ttt_enabled and ecfg.ttt_kind != "global":
        base = ecfg.ttt_kind + "-ttt"
    suffix = {"off": "", "batch": "+slot", "causal": "+causal-slot"}.get(ecfg.slot_mode)
    if suffix is None:
        raise EvalInputError(f"eval.slot_mode must be off, batch or causal, got {ecfg.slot_mode!r}")
    if ecfg.slot_mode == "causal":
        suffix += ("-carry" if ecfg.slot_carry else "") + ("-bias" if ecfg.slot_bias else "")
    return base + suffix


def mode_to_eval_config(mode: str, ecfg: EvalConfig) -> EvalConfig:
    """A copy of ecfg switched to an audit mode; sliding modes keep eval.stride, or use
    min(64, seq_len) when it is 0 (causal SLOT needs overlapping windows to have context)."""
    mode, slot_fields = slot_variant_of(mode)
    mode = EVAL_MODE_ALIASES.get(mode, mode)
    if mode not in EVAL_MODES:
        variants = [p + "causal-slot" + v for p in ("", "ttt+") for v in SLOT_VARIANTS if v]
        raise EvalInputError(f"unknown eval mode {mode!r}; use one of {', '.join(list(EVAL_MODES) + variants)}")
    needs_stride, ttt, slot = EVAL_MODES[mode]
    stride = ecfg.stride if needs_stride else 0
    if needs_stride and stride <= 0:
        stride = max(1, min(EVAL_DEFAULT_STRIDE, ecfg.seq_len))
    return dataclasses.replace(ecfg, stride=stride, ttt_enabled=ttt, slot_mode=slot,
                               ttt_kind=EVAL_TTT_KINDS.get(mode, "global"), **slot_fields)


def evaluate(model: torch.nn.Module, val_tokens: Any, tables: Any, ecfg: EvalConfig, comm: Comm,
             device: torch.device, log: Callable | None = None,
             recorder: ScoreRecorder | None = None, events: Any = None, compile: bool = False) -> dict:
    """Run the configured eval mode. Returns val_loss, val_bpb, tokens, bytes, mode, causal,
    eval_seconds (plus per-phase seconds for TTT). TTT never modifies `model`.

    compile=True scores full-length windows through torch.compile'd forwards (eval/forward.py).
    """
    if ecfg.seq_len <= 0:
        raise EvalInputError("eval.seq_len is 0: call pgolf.config.finalize_config first "
                             "(it defaults to run.train_seq_len)")
    t0 = time.perf_counter()
    tokens = val_tokens_tensor(val_tokens)
    if ecfg.max_tokens > 0:
        tokens = tokens[:ecfg.max_tokens + 1]
    mode = eval_mode_name(ecfg)
    forwards = Forwards(compile, ecfg.seq_len)
    slot = make_slot_scorer(ecfg, forwards)
    scorer = slot or (PlainScorer(forwards) if compile else None)
    if slot is not None and not slot.causal and log is not None and comm.is_main:
        log(f"eval:mode {mode} uses batch SLOT, which is NON-CAUSAL (its delta is fitted on the "
            "targets it scores); the result is not a legal record score")
    if ecfg.ttt_enabled and ecfg.ttt_kind != "global":
        if slot is not None:
            raise EvalInputError(f"eval.slot_mode {ecfg.slot_mode} does not combine with eval.ttt_kind="
                                 f"{ecfg.ttt_kind}; set eval.slot_mode off")
        run_doc_ttt = eval_lora_ttt if ecfg.ttt_kind == "lora" else eval_phased_ttt
        if ecfg.ttt_lora_method == "record":
            run_doc_ttt = eval_record_ttt
        out = run_doc_ttt(model, tokens, ecfg, tables, comm, device, log, recorder, events)
    elif ecfg.ttt_enabled:
        out = eval_ttt(model, tokens, ecfg, tables, comm, device, log, scorer, recorder, events)
    elif ecfg.stride > 0 or slot is not None:
        out = eval_sliding(model, tokens, ecfg.seq_len, ecfg.stride or ecfg.seq_len,
                           ecfg.batch_seqs, tables, comm, device, log, scorer, recorder, events,
                           ecfg.budget_seconds)
    else:
        out = eval_plain(model, tokens, ecfg.seq_len, ecfg.batch_tokens, tables, comm, device,
                         log, recorder, ecfg.budget_seconds, scorer)
    out["mode"] = mode
    out["causal"] = slot is None or slot.causal
    out["eval_seconds"] = time.perf_counter() - t0
    if log is not None and comm.is_main:
        tag = "" if out["causal"] else " NON-CAUSAL"
        log(f"eval:done mode:{mode}{tag} val_loss:{out['val_loss']:.6f} "
            f"val_bpb:{out['val_bpb']:.6f} tokens:{out['tokens']} eval_seconds:{out['eval_seconds']:.1f}")
        if ecfg.budget_seconds > 0 and out["eval_seconds"] > ecfg.budget_seconds:
            log(f"eval:warning took {out['eval_seconds']:.0f}s, over eval.budget_seconds "
                f"{ecfg.budget_seconds:.0f}s")
    return out
