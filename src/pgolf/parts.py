"""The optional parts of a run, and when a config needs each: a bundle ships only those.

Every byte of train_gpt.py is a byte the model cannot have, so `pgolf bundle` leaves out the
definitions of each part its config does not use. A bundled run told to use a part it was
built without (an environment variable, say) stops before any work, naming the part.
tests/test_parts.py traces real runs to check that a run calls nothing outside its parts.
"""

from typing import Callable, NoReturn

from pgolf.config_tree import Config
from pgolf.errors import PgolfError


class UnshippedPartError(PgolfError, RuntimeError):
    """The config needs a part this train_gpt.py was generated without."""


# part -> (does the config use it, the top-level definitions only that part calls)
OPTIONAL_PARTS: dict[str, tuple[Callable[[Config], bool], tuple[str, ...]]] = {
    "lora_ttt": (lambda c: c.eval.ttt_enabled and c.eval.ttt_kind == "lora" and c.eval.ttt_lora_method == "per_doc",
                 ("eval_lora_ttt",)),
    "phased_ttt": (lambda c: c.eval.ttt_enabled and c.eval.ttt_kind == "phased"
                   and c.eval.ttt_lora_method == "per_doc", ("eval_phased_ttt",)),
    "record_ttt": (lambda c: c.eval.ttt_enabled and c.eval.ttt_kind != "global" and c.eval.ttt_lora_method == "record",
                   ("eval_record_ttt",)),
    "causal_slot": (lambda c: c.eval.slot_mode == "causal", ("SlotCarry", "slot_doc_masks")),
    "gptq": (lambda c: c.quant.matrix_method == "gptq", ("gptq_quantize", "calibrate")),
    "lqer": (lambda c: c.quant.lqer_rank > 0, ("lqer_entries", "pick_lqer_targets")),
    "coprime_sampling": (lambda c: c.data.sampling == "coprime", ("CoprimeWindowSampler",)),
    "stream_packing": (lambda c: c.data.packing == "stream", ("ShardSpanStream",)),
    "pergroup": (lambda c: c.quant.compressor == "pergroup",
                 ("compress_pergroup", "decompress_pergroup", "pergroup_setup")),
    "fused_kernels": (lambda c: c.model.fused_ce != "off" or c.model.fused_mlp != "off",
                      ("softcap_ce_ops", "softcap_cross_entropy", "leaky_mlp_ops", "leaky_relu_squared_linear")),
    "checkpoints": (lambda c: c.run.checkpoint_every != 0, ("save_checkpoint", "AutoCheckpoints", "checkpoint_due")),
    # A generated train_gpt.py never resumes (its entry has no --resume): `pgolf train --resume` does.
    "resume": (lambda c: False, ("load_checkpoint", "restore_checkpoint", "resume_edits")),
    # A lean one (quant.code_lean) leaves SIGINT/SIGTERM to Python's defaults, as the records' scripts do.
    "signals": (lambda c: not c.quant.code_lean, ("stop_on_signals",)),
}


def parts_needed(cfg: Config) -> set[str]:
    return {part for part, (needed, _) in OPTIONAL_PARTS.items() if needed(cfg)}


def check_parts_shipped(cfg: Config, shipped: tuple[str, ...]) -> None:
    """Refuse a config that needs a part the running bundle left out."""
    missing = sorted(parts_needed(cfg) - set(shipped))
    if missing:
        raise UnshippedPartError(f"this train_gpt.py was generated without {', '.join(missing)}, which the config "
                                 "uses (an environment variable or --set turned it on): regenerate it with "
                                 "`pgolf bundle` for this config")


def unshipped(part: str) -> Callable[..., NoReturn]:
    """What a left-out definition's name is bound to in a bundle: a call names the part."""
    def missing(*args, **kwargs) -> NoReturn:
        raise UnshippedPartError(f"this train_gpt.py was generated without {part}; regenerate it with "
                                 "`pgolf bundle` for a config that uses it")
    return missing
