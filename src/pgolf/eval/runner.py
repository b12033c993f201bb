"""One entry point for the configured evaluation mode, and the typed mode (EvalMode) that names
and selects it."""

import dataclasses
import time
from typing import Any, Callable, Literal

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

EVAL_DEFAULT_STRIDE = 64
# Mode names: a base, optionally "+" a SLOT name. Base -> (overlapping windows, TTT kind).
EVAL_MODE_BASES: dict[str, tuple[bool, str]] = {
    "plain": (False, "off"), "sliding": (True, "off"), "ttt": (True, "global"),
    "lora-ttt": (False, "lora"), "phased-ttt": (False, "phased"),
}
# SLOT name -> (eval.slot_mode, slot_carry, slot_bias); the causal variants fit on scored targets only.
EVAL_MODE_SLOTS: dict[str, tuple[str, bool, bool]] = {
    "slot": ("batch", False, False), "causal-slot": ("causal", False, False),
    "causal-slot-carry": ("causal", True, False), "causal-slot-bias": ("causal", False, True),
    "causal-slot-carry-bias": ("causal", True, True),
}
# Bases a SLOT name may follow: SLOT rescoring windows needs context, so plain+ is the sliding one;
# per-document TTT scores with its own adapters and takes no SLOT.
_SLOT_BASES = ("plain", "sliding", "ttt")


@dataclasses.dataclass(frozen=True)
class EvalMode:
    """One evaluation mode, parsed once from a name (`pgolf audit --mode`, `pgolf bench eval`)
    or read from an EvalConfig; `name` is what evaluate() logs and reports ("mode" in metrics)."""

    sliding: bool  # overlapping windows: eval.stride > 0 (min(64, seq_len) when the config has 0)
    ttt: Literal["off", "global", "lora", "phased"] = "off"
    slot: Literal["off", "batch", "causal"] = "off"
    slot_carry: bool = False  # causal SLOT only
    slot_bias: bool = False  # causal SLOT only

    def __post_init__(self) -> None:
        if self.ttt in ("lora", "phased") and self.slot != "off":
            raise EvalInputError(f"eval.slot_mode {self.slot} does not combine with eval.ttt_kind={self.ttt}; "
                                 "set eval.slot_mode off")

    @property
    def causal(self) -> bool:
        """False for batch SLOT, whose delta is fitted on the targets it scores."""
        return self.slot != "batch"

    @property
    def name(self) -> str:
        """plain | sliding | ttt | lora-ttt | phased-ttt, plus +slot (NON-CAUSAL batch SLOT) or
        +causal-slot[-carry][-bias]."""
        base = {"off": "sliding" if self.sliding else "plain", "global": "ttt"}.get(self.ttt, f"{self.ttt}-ttt")
        if self.slot == "off":
            return base
        slot = "slot" if self.slot == "batch" else "causal-slot"
        return f"{base}+{slot}" + ("-carry" if self.slot_carry else "") + ("-bias" if self.slot_bias else "")

    @classmethod
    def parse(cls, name: str) -> "EvalMode":
        """The mode a user's name asks for: a base, a SLOT name (sliding windows), or base+SLOT."""
        base, plus, slot = name.partition("+")
        if not plus and base in EVAL_MODE_SLOTS:
            base, slot = "sliding", base
        if base in EVAL_MODE_BASES and (slot in EVAL_MODE_SLOTS and base in _SLOT_BASES or not plus):
            sliding, ttt = EVAL_MODE_BASES[base]
            slot_mode, carry, bias = EVAL_MODE_SLOTS.get(slot, ("off", False, False))
            return cls(sliding or slot_mode != "off", ttt, slot_mode, carry, bias)
        raise EvalInputError(f"unknown eval mode {name!r}; use one of {', '.join(cls.names())}")

    @classmethod
    def names(cls, prefixed: bool = False) -> list[str]:
        """The names users type; prefixed adds the sliding+ / plain+ spellings of the SLOT modes."""
        prefixes = ("", "ttt+", "sliding+", "plain+") if prefixed else ("", "ttt+")
        return list(EVAL_MODE_BASES) + [p + s for p in prefixes for s in EVAL_MODE_SLOTS]

    @classmethod
    def of(cls, ecfg: EvalConfig) -> "EvalMode":
        """The mode an EvalConfig runs."""
        causal = ecfg.slot_mode == "causal"
        return cls(ecfg.stride > 0, ecfg.ttt_kind if ecfg.ttt_enabled else "off", ecfg.slot_mode,
                   causal and ecfg.slot_carry, causal and ecfg.slot_bias)

    def eval_config(self, ecfg: EvalConfig) -> EvalConfig:
        """A copy of ecfg switched to this mode; sliding modes keep eval.stride, or use
        min(64, seq_len) when it is 0 (causal SLOT needs overlapping windows to have context)."""
        stride = ecfg.stride if self.sliding else 0
        if self.sliding and stride <= 0:
            stride = max(1, min(EVAL_DEFAULT_STRIDE, ecfg.seq_len))
        slot = {} if self.slot == "off" else {"slot_carry": self.slot_carry, "slot_bias": self.slot_bias}
        return dataclasses.replace(ecfg, stride=stride, ttt_enabled=self.ttt != "off", slot_mode=self.slot,
                                   ttt_kind="global" if self.ttt == "off" else self.ttt, **slot)


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
    mode = EvalMode.of(ecfg)
    forwards = Forwards(compile, ecfg.seq_len)
    # The dispatch reads ecfg itself (not `mode`, its summary) so a lean bundle, frozen to one
    # config, keeps only the branch that config takes (bundle.freeze).
    slot = make_slot_scorer(ecfg, forwards) if ecfg.slot_mode != "off" else None
    scorer = slot or (PlainScorer(forwards) if compile else None)
    if not mode.causal and log is not None and comm.is_main:
        log(f"eval:mode {mode.name} uses batch SLOT, which is NON-CAUSAL (its delta is fitted on the "
            "targets it scores); the result is not a legal record score")
    if ecfg.ttt_enabled and ecfg.ttt_kind in ("lora", "phased"):
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
    out["mode"] = mode.name
    out["causal"] = mode.causal
    out["eval_seconds"] = time.perf_counter() - t0
    if log is not None and comm.is_main:
        tag = "" if out["causal"] else " NON-CAUSAL"
        log(f"eval:done mode:{mode.name}{tag} val_loss:{out['val_loss']:.6f} "
            f"val_bpb:{out['val_bpb']:.6f} tokens:{out['tokens']} eval_seconds:{out['eval_seconds']:.1f}")
        if ecfg.budget_seconds > 0 and out["eval_seconds"] > ecfg.budget_seconds:
            log(f"eval:warning took {out['eval_seconds']:.0f}s, over eval.budget_seconds "
                f"{ecfg.budget_seconds:.0f}s")
    return out
