"""The rules a config must pass before any work starts, and the checks of environment names.

Everything here returns problems as one-line strings (`section.field: value ...; use ...`)
instead of raising: pgolf.config turns them into ConfigError. That keeps this module free of
pgolf imports, so pgolf.config can import it without a cycle (the bundle pastes modules in
dependency order and forbids re-exports).
"""

import dataclasses
import difflib
import math
import re
from typing import Any, Iterable, Literal, get_args, get_origin

# name -> (predicate, what is allowed). Bounds follow what the code downstream can run:
# momenta and betas below 1 (torch refuses beta >= 1), divisors and counts at least 1.
_CHECKS_KINDS: dict[str, tuple[Any, str]] = {
    ">=1": (lambda v: v >= 1, ">= 1"),
    ">=2": (lambda v: v >= 2, ">= 2"),
    ">=0": (lambda v: v >= 0, ">= 0"),
    ">=-1": (lambda v: v >= -1, ">= -1 (-1 = auto)"),
    ">0": (lambda v: v > 0, "> 0"),
    "[0,1]": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "[0,1)": (lambda v: 0 <= v < 1, "in [0, 1)"),
}

# Single-field ranges; a field not listed only has its type (and finiteness) checked. Fields
# with a fixed set of values (quantization widths too) are Literal-typed in config_tree instead.
CONFIG_RANGES: dict[str, str] = {
    "model.vocab_size": ">=2", "model.num_layers": ">=1", "model.model_dim": ">=1",
    "model.num_heads": ">=1", "model.num_kv_heads": ">=1", "model.mlp_mult": ">0",
    "model.tied_embed_init_std": ">=0", "model.logit_softcap": ">=0", "model.rope_base": ">0",
    "model.leaky_slope": ">=0", "model.rope_dims": ">=0", "model.rope_train_len": ">=0",
    "model.bigram_vocab_size": ">=0", "model.bigram_dim": ">=1", "model.xsa_last_n": ">=0",
    "model.ve_dim": ">=1", "model.bos_id": ">=0", "model.num_loops": ">=0", "model.loop_start": ">=0",
    "model.loop_end": ">=0", "model.loop_enable_at": "[0,1)", "model.parallel_start": ">=0",
    "model.gate_window": ">=1", "model.attn_gate_init_std": ">=0", "model.attn_gate_scale": ">0",
    "optim.matrix_lr": ">=0", "optim.scalar_lr": ">=0", "optim.tied_embed_lr": ">=0",
    "optim.embed_lr": ">=0", "optim.head_lr": ">=0", "optim.muon_momentum": "[0,1)",
    "optim.muon_momentum_warmup_start": "[0,1)", "optim.muon_momentum_warmup_steps": ">=0",
    "optim.muon_backend_steps": ">=1", "optim.muon_wd": ">=0", "optim.adam_wd": ">=0",
    "optim.beta1": "[0,1)", "optim.beta2": "[0,1)", "optim.adam_eps": ">0",
    "optim.grad_clip_norm": ">=0", "schedule.min_lr_mult": "[0,1)",
    "schedule.warmup_steps": ">=0", "schedule.warmdown_iters": ">=0", "schedule.ema_decay": "[0,1)",
    "schedule.swa_every": ">=1", "schedule.swa_threshold": "[0,1]",
    "schedule.wd_taper_start": "[0,1]", "schedule.wd_taper_final_mult": ">=0",
    "schedule.momentum_cooldown_start": "[0,1]", "schedule.momentum_cooldown_final": "[0,1)",
    "schedule.warmdown_frac": "[0,1]", "optim.embed_wd": ">=0", "optim.muon_pe_safety": ">0",
    "quant.small_numel": ">=0",
    "quant.late_qat_threshold": "[0,1]", "quant.max_artifact_bytes": ">=1",
    "quant.sdclip_k_matrix": ">0", "quant.sdclip_k_embed": ">0",
    "quant.gptq_block_size": ">=1", "quant.gptq_damp": ">0", "quant.gptq_reserve_seconds": ">=0",
    "quant.calib_seqs": ">=1", "quant.calib_seq_len": ">=0", "quant.calib_temperature": ">0",
    "quant.calib_batch_seqs": ">=1", "quant.lqer_rank": ">=0", "quant.lqer_top_k": ">=0",
    "quant.sdclip_k_attn": ">=0", "quant.sdclip_k_mlp": ">=0",
    "quant.lqer_asym_group": ">=1",
    "eval.seq_len": ">=0", "eval.batch_tokens": ">=1", "eval.stride": ">=0", "eval.batch_seqs": ">=1",
    "eval.max_tokens": ">=0", "eval.ttt_lr": ">=0", "eval.ttt_epochs": ">=0",
    "eval.ttt_chunk_tokens": ">=1", "eval.ttt_freeze_blocks": ">=0", "eval.ttt_momentum": "[0,1)",
    "eval.ttt_batch_seqs": ">=1", "eval.ttt_grad_clip": ">=0", "eval.slot_lr": ">=0",
    "eval.slot_steps": ">=0", "eval.slot_wd": ">=0", "eval.slot_eps": ">0",
    "eval.slot_bias_lr": ">=0", "eval.slot_carry_steps": ">=0", "eval.slot_bos_id": ">=-1",
    "eval.audit_tokens": ">=0", "eval.budget_seconds": ">=0",
    "eval.ttt_lora_rank": ">=0", "eval.ttt_lora_alpha": ">=0", "eval.ttt_lora_lr": ">=0",
    "eval.ttt_lora_beta1": "[0,1)", "eval.ttt_lora_beta2": "[0,1)", "eval.ttt_lora_wd": ">=0",
    "eval.ttt_lora_chunk": ">=1", "eval.ttt_lora_steps": ">=1", "eval.ttt_phased_prefix_docs": ">=0",
    "eval.ttt_lora_batch": ">=1", "eval.ttt_lora_eval_seq_len": ">=0",
    "eval.ttt_phased_phases": ">=1",
    "run.iterations": ">=1", "run.max_wallclock_seconds": ">=0", "run.train_batch_tokens": ">=1",
    "run.train_seq_len": ">=1", "run.accum_world": ">=1", "run.val_loss_every": ">=0",
    "run.train_log_every": ">=0", "run.checkpoint_every": ">=-1",
    "run.collective_timeout_seconds": ">0", "model.doc_max_len": ">=0", "quant.calib_batches": ">=1",
}

# Matrices per-document LoRA TTT can adapt (eval.ttt_lora_targets).
LORA_TARGET_NAMES = ("q", "k", "v", "o", "up", "down", "head")
# The level range each compressor accepts (compress_bytes would clamp anything else silently).
COMPRESSOR_LEVELS = {"zlib": (0, 9), "lzma": (0, 9), "zstd": (1, 22), "brotli": (0, 11), "pergroup": (1, 9)}


def _base_type(ftype: Any) -> Any:
    args = [a for a in get_args(ftype) if a is not type(None)]
    return args[0] if get_origin(ftype) is not Literal and args else ftype


def _type_problem(key: str, v: Any, ftype: Any) -> str | None:
    if get_origin(ftype) is Literal:
        # The one check of every enum field. Type too: True == 1 and 6.0 == 6, yet neither is a width.
        allowed = get_args(ftype)
        if any(v == a and type(v) is type(a) for a in allowed):
            return None
        return f"{key}: {v!r} is not one of {', '.join(map(str, allowed))}"
    want = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}.get(ftype, (object,))
    if (isinstance(v, bool) and ftype is not bool) or not isinstance(v, want):
        return f"{key}: {v!r} is not a {ftype.__name__}"
    if isinstance(v, float) and not math.isfinite(v):
        return f"{key}: {v!r} is not allowed; use a finite number"
    return None


def _field_problem(key: str, v: Any, ftype: Any) -> str | None:
    problem = _type_problem(key, v, ftype)
    if problem or key not in CONFIG_RANGES:
        return problem
    ok, allowed = _CHECKS_KINDS[CONFIG_RANGES[key]]
    noun = "an integer" if ftype is int else "a number"
    return None if ok(v) else f"{key}: {v!r} is not allowed; use {noun} {allowed}"


def config_field_problems(cfg: Any) -> list[str]:
    """Type, enum, finiteness and range problems of each field alone. Fields still None (arch
    defaults not filled yet) are skipped."""
    out = []
    for sec_field in dataclasses.fields(cfg):
        sec = getattr(cfg, sec_field.name)
        for f in dataclasses.fields(sec):
            v = getattr(sec, f.name)
            if v is not None:
                problem = _field_problem(f"{sec_field.name}.{f.name}", v, _base_type(f.type))
                out += [problem] if problem else []
    return out


def config_layer_list(spec: str, num_layers: int) -> tuple[list[int], str | None]:
    """'9,10' or '-2,-1' -> (sorted absolute block indices, None), or ([], the problem)."""
    out = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if not re.fullmatch(r"-?\d+", part):
            return [], f"model.ve_layers: {spec!r} is not a comma list of block indices (e.g. 9,10 or -2,-1)"
        i = int(part)
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            return [], (f"model.ve_layers: layer index {i} is out of range for {num_layers} layers; "
                        f"use {-num_layers}..{num_layers - 1}")
        out.add(j)
    return sorted(out), None


def _model(m: Any) -> list[str]:
    if m.model_dim % m.num_heads:
        return [f"model.model_dim: {m.model_dim} does not divide by model.num_heads={m.num_heads}; "
                f"use a multiple of {m.num_heads}"]
    if m.num_heads % m.num_kv_heads:
        return [f"model.num_kv_heads: {m.num_kv_heads} does not divide model.num_heads={m.num_heads}; "
                f"use a divisor of it (each KV head serves the same number of query heads)"]
    head_dim = m.model_dim // m.num_heads
    out = []
    if head_dim % 2:
        out.append(f"model.model_dim: {m.model_dim} / model.num_heads {m.num_heads} = head dim {head_dim}, "
                   f"which is odd; use an even head dim (RoPE rotates pairs of dims)")
    if m.rope_dims is not None and (m.rope_dims > head_dim or m.rope_dims % 2):
        out.append(f"model.rope_dims: {m.rope_dims} is not allowed; use an even number <= the head dim "
                   f"{head_dim} (0 = all)")
    if int(m.mlp_mult * m.model_dim) < 1:
        out.append(f"model.mlp_mult: {m.mlp_mult} gives an MLP of width 0 at model_dim {m.model_dim}; "
                   f"use a larger multiple")
    if m.bigram_vocab_size == 1:
        out.append("model.bigram_vocab_size: 1 is not allowed; use 0 (off) or >= 2 (hashes go mod buckets - 1)")
    if m.ve_enabled:
        out += [p for p in [config_layer_list(m.ve_layers, m.num_layers)[1]] if p]
    return out + _frontier(m)


def _frontier(m: Any) -> list[str]:
    out = []
    if m.bos_id >= m.vocab_size:
        out.append(f"model.bos_id: {m.bos_id} is not a token of a {m.vocab_size}-token vocabulary; "
                   f"use the tokenizer's BOS id (1 for the challenge tokenizers)")
    if m.num_loops and not m.loop_start <= m.loop_end < m.num_layers:
        out.append(f"model.loop_end: blocks {m.loop_start}..{m.loop_end} are not a range of the "
                   f"{m.num_layers} blocks; use 0 <= loop_start <= loop_end <= {m.num_layers - 1}")
    if m.parallel_start >= m.num_layers:
        out.append(f"model.parallel_start: {m.parallel_start} is past the last block; use 1..{m.num_layers - 1} "
                   f"(0 = off)")
    if m.num_loops and m.parallel_start and m.loop_end >= m.parallel_start:
        out.append(f"model.loop_end: {m.loop_end} loops a block at or past model.parallel_start="
                   f"{m.parallel_start}; once the lanes split the stack stays parallel, so loop "
                   f"earlier blocks or start the lanes later")
    if m.attn_gate in ("out", "sparse") and m.gate_window > m.model_dim:
        out.append(f"model.gate_window: {m.gate_window} is wider than model.model_dim={m.model_dim}; "
                   f"use 1..{m.model_dim}")
    if m.smear and m.smear_kind == "input" and m.gate_window > m.model_dim:
        out.append(f"model.gate_window: {m.gate_window} is wider than model.model_dim={m.model_dim}; "
                   f"use 1..{m.model_dim}")
    return out


def _train(cfg: Any) -> list[str]:
    r, out = cfg.run, []
    micro = r.accum_world * r.train_seq_len
    if r.train_batch_tokens % micro:
        out.append(f"run.train_batch_tokens: {r.train_batch_tokens} is not a multiple of run.accum_world x "
                   f"run.train_seq_len = {r.accum_world} x {r.train_seq_len} = {micro}; use a positive "
                   f"multiple of {micro} (every micro-step takes whole sequences)")
    if cfg.schedule.warmdown_mode == "time" and r.max_wallclock_seconds <= 0:
        out.append("schedule.warmdown_mode: 'time' needs a wall-clock cap, but run.max_wallclock_seconds is 0; "
                   "set the cap or use warmdown_mode iters or auto")
    s = cfg.schedule
    if s.momentum_cooldown_start < 1 and s.momentum_cooldown_final > cfg.optim.muon_momentum:
        out.append(f"schedule.momentum_cooldown_final: {s.momentum_cooldown_final} is above optim.muon_momentum "
                   f"{cfg.optim.muon_momentum}, so the cooldown would raise momentum; use at most "
                   f"{cfg.optim.muon_momentum} or momentum_cooldown_start 1.0 (off)")
    q = cfg.quant
    lo, hi = COMPRESSOR_LEVELS[q.compressor]
    if not lo <= q.level <= hi:
        out.append(f"quant.level: {q.level} is not allowed for compressor {q.compressor}; use {lo}..{hi}")
    if q.late_qat_threshold > 0 and q.matrix_bits == 16:
        out.append(f"quant.late_qat_threshold: {q.late_qat_threshold} fake-quantizes to quant.matrix_bits, "
                   f"which is 16 (no grid); set matrix_bits 5..8 or late_qat_threshold 0")
    floor = cfg.schedule.min_lr_mult
    if 0 < q.late_qat_threshold <= floor:
        # The multiplier never drops below the floor: late QAT would never switch on.
        out.append(f"quant.late_qat_threshold: {q.late_qat_threshold} is not above schedule.min_lr_mult {floor}, "
                   "so late QAT would never start; raise the threshold or lower the floor")
    if cfg.data.packing == "stream" and not cfg.model.doc_mask:
        out.append("data.packing: 'stream' makes one row of every micro-batch's documents, which only "
                   "model.doc_mask keeps apart; set model.doc_mask true or data.packing rows")
    if cfg.data.packing == "stream" and cfg.data.sampling != "sequential":
        out.append(f"data.packing: 'stream' reads shards in turn, data.sampling={cfg.data.sampling!r} draws windows; "
                   "set data.sampling sequential or data.packing rows")
    return out + _quant(cfg)


def _quant(cfg: Any) -> list[str]:
    q, out = cfg.quant, []
    if q.clip_weighting == "hessian" and q.matrix_method != "gptq":
        out.append("quant.clip_weighting: 'hessian' needs the calibration Hessians of quant.matrix_method=gptq; "
                   "set matrix_method gptq or clip_weighting plain")
    if q.gptq_embed and q.matrix_method != "gptq":
        out.append("quant.gptq_embed: true needs quant.matrix_method=gptq (calibration); set it or gptq_embed false")
    wall = cfg.run.max_wallclock_seconds
    if wall > 0 and q.gptq_reserve_seconds >= wall:
        out.append(f"quant.gptq_reserve_seconds: {q.gptq_reserve_seconds} leaves no training time under "
                   f"run.max_wallclock_seconds={wall}; use less than {wall}")
    return out


def _eval(cfg: Any) -> list[str]:
    e, out = cfg.eval, []
    seq = e.seq_len or cfg.run.train_seq_len
    if e.stride > seq:
        out.append(f"eval.stride: {e.stride} is longer than the eval window ({seq} tokens); "
                   f"use 0 (no overlap) or 1..{seq}")
    if 0 < e.max_tokens < seq:
        out.append(f"eval.max_tokens: {e.max_tokens} is shorter than one eval window ({seq} tokens); "
                   f"use 0 (all) or >= {seq}")
    if e.slot_mode == "batch" and (e.slot_bias or e.slot_carry):
        out.append("eval.slot_mode: 'batch' with slot_bias/slot_carry, which only the causal SLOT has; "
                   "set eval.slot_mode causal or turn them off")
    if e.slot_bos_id >= cfg.model.vocab_size:
        out.append(f"eval.slot_bos_id: {e.slot_bos_id} is not a token id (model.vocab_size="
                   f"{cfg.model.vocab_size}); use 0..{cfg.model.vocab_size - 1} or -1")
    if e.plain_whole_batches and e.batch_tokens < cfg.run.accum_world * seq:
        out.append(f"eval.plain_whole_batches: eval.batch_tokens {e.batch_tokens} gives no whole window per "
                   f"micro-batch (run.accum_world {cfg.run.accum_world} x seq_len {seq}); raise batch_tokens")
    out += _lora_ttt(e, seq)
    if e.ttt_freeze_blocks > cfg.model.num_layers:
        out.append(f"eval.ttt_freeze_blocks: {e.ttt_freeze_blocks} is more than model.num_layers="
                   f"{cfg.model.num_layers}; use 0..{cfg.model.num_layers}")
    return out


# The experiment trackers pgolf.trackers can feed (run.trackers) and the extra each needs.
TRACKERS_KNOWN = {"tensorboard": "tensorboard", "wandb": "wandb"}


def tracker_names(spec: str) -> list[str]:
    """run.trackers as a list of names (comma-separated, blanks ignored)."""
    return [n.strip() for n in spec.split(",") if n.strip()]


def _trackers(cfg: Any) -> list[str]:
    bad = [n for n in tracker_names(cfg.run.trackers) if n not in TRACKERS_KNOWN]
    if bad:
        return [f"run.trackers: unknown tracker {', '.join(map(repr, bad))}; use a comma-separated subset of "
                f"{', '.join(TRACKERS_KNOWN)} or leave it empty"]
    return []


def _lora_ttt(e: Any, seq: int) -> list[str]:
    out = []
    names = [p.strip() for p in e.ttt_lora_targets.split(",") if p.strip()]
    bad = [p for p in names if p not in LORA_TARGET_NAMES]
    if bad or not names:
        out.append(f"eval.ttt_lora_targets: {e.ttt_lora_targets!r} is not a comma list of "
                   f"{', '.join(LORA_TARGET_NAMES)}; e.g. q,k,v,o,up,down")
    if e.ttt_enabled and e.ttt_kind != "global" and e.ttt_lora_chunk > seq:
        out.append(f"eval.ttt_lora_chunk: {e.ttt_lora_chunk} is longer than the eval window ({seq} tokens); "
                   f"use 1..{seq}")
    if e.ttt_enabled and e.ttt_kind != "global" and e.slot_mode != "off":
        out.append(f"eval.slot_mode: {e.slot_mode!r} does not combine with eval.ttt_kind={e.ttt_kind} "
                   f"(per-document TTT scores with its own adapters); set slot_mode off or ttt_kind global")
    return out


def config_problems(cfg: Any) -> list[str]:
    """Every problem of the config; cross-field rules run only once each field is valid alone,
    so one bad value is reported once, by its own name."""
    return config_field_problems(cfg) or (_model(cfg.model) + _train(cfg) + _eval(cfg)
                                          + _trackers(cfg))


def config_world_size_problem(cfg: Any, world_size: int) -> str | None:
    """What only the launch can tell: every process must run the same number of micro-steps."""
    if world_size >= 1 and cfg.run.accum_world % world_size == 0:
        return None
    return (f"run.accum_world: {cfg.run.accum_world} is not a multiple of the world size {world_size}; "
            f"use a multiple of {world_size} (each process runs accum_world / world_size micro-steps)")


# ---------------------------------------------------------------- environment names

# Variables the #549 reference script reads for features pgolf does not have, with the
# reference's defaults (records #414 -> #549). At the default they change nothing there either,
# so they pass; any other value would silently train a different model than asked.
ENV_REFUSED: dict[str, tuple[float, str]] = {
    "GATED_ATTENTION": (0.0, "gated attention"),
    "VALUE_RESIDUAL": (0.0, "value-residual learning"),
    "LAWA_ENABLED": (0.0, "LAWA checkpoint averaging"),
    "LAWA_K": (10.0, "LAWA checkpoint averaging"),
    "LAWA_FREQ": (100.0, "LAWA checkpoint averaging"),
    "MUON_BETA2": (0.95, "the reference's Muon beta2"),
}
# Any other LAWA_* name is refused at any non-empty value: its default is unknown.
_ENV_REFUSED_PREFIX = "LAWA_"

# Ordinary system, launcher and library variables: never a challenge setting, never warned.
ENV_SYSTEM_NAMES = frozenset({
    "PATH", "HOME", "USER", "USERNAME", "LOGNAME", "SHELL", "PWD", "OLDPWD", "LANG", "LANGUAGE", "TERM",
    "TZ", "TMPDIR", "TEMP", "TMP", "HOSTNAME", "HOSTTYPE", "OSTYPE", "MACHTYPE", "SHLVL", "MAIL", "EDITOR",
    "VISUAL", "PAGER", "LESS", "LS_COLORS", "COLORTERM", "COLUMNS", "LINES", "DISPLAY", "CI", "VIRTUAL_ENV",
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_NAME", "ROLE_WORLD_SIZE", "NODE_RANK", "MAX_JOBS", "CUDA_HOME", "CUDA_PATH", "_",
})
ENV_SYSTEM_PREFIXES = (
    "CUDA_", "NCCL_", "GLOO_", "OMP_", "KMP_", "MKL_", "OPENBLAS_", "TORCH", "PYTORCH_", "TRITON_",
    "PYTHON", "PYTEST_", "MASTER_", "NVIDIA_", "CUDNN_", "CUBLAS_", "LC_", "LD_", "XDG_", "SSH_", "GIT_",
    "CONDA_", "PIP_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "WANDB_", "TERM_", "DBUS_", "GITHUB_",
    "RUNNER_", "SLURM_", "TF_", "JAX_", "XLA_", "UV_", "NVM_", "NODE_", "NPM_",
)
# Prefixes of the reference's setting families: an unknown name with one is a setting that
# pgolf would ignore, so the user hears about it.
ENV_FAMILIES = (
    "TTT_", "SLOT_", "QAT_", "LATE_QAT", "EMA_", "SWA_", "LAWA_", "MUON_", "ADAM_", "BETA", "ROPE_",
    "VE_", "BIGRAM_", "TRIGRAM_", "XSA_", "MTP_", "GPTQ_", "EVAL_", "TRAIN_", "VAL_", "WARMUP_",
    "WARMDOWN_", "MLP_", "LN_", "QK_", "LOGIT_", "TIE_", "TIED_", "EMBED_", "MATRIX_", "SCALAR_",
    "SMEAR", "GRAD_CLIP", "NUM_", "MODEL_", "VOCAB_", "TOKENIZER_",
)


def _env_is_default(raw: str, default: float) -> bool:
    s = raw.strip().lower()
    words = {"": default, "false": 0.0, "no": 0.0, "off": 0.0, "true": 1.0, "yes": 1.0, "on": 1.0}
    try:
        return (words[s] if s in words else float(s)) == default
    except ValueError:
        return False


def env_refusals(env: dict[str, str]) -> list[str]:
    """One line per set variable whose reference meaning pgolf lacks and whose value is not
    the reference default."""
    out = []
    for name in sorted(env):
        if name in ENV_REFUSED:
            default, what = ENV_REFUSED[name]
            if _env_is_default(env[name], default):
                continue
            fix = f"unset it or set it to {default:g}"
        elif name.startswith(_ENV_REFUSED_PREFIX) and env[name].strip():
            what, fix = "LAWA checkpoint averaging", "unset it"
        else:
            continue
        out.append(f"environment variable {name}={env[name]!r} asks for {what}, which pgolf does not "
                   f"implement; {fix}")
    return out


def env_name_warnings(env: dict[str, str], known: Iterable[str], unused: Iterable[str] = ()) -> list[str]:
    """One warning per upper-case variable that is set but changes nothing: a known-unused
    reference name, a near-miss of a known name (with the suggestion), or an unknown member
    of a setting family. System variables (ENV_SYSTEM_*) are never warned about."""
    used, unused = sorted(set(known)), set(unused)
    known = sorted(set(used) | unused | set(ENV_REFUSED))
    out = []
    for name in sorted(env):
        if name in unused:
            out.append(f"environment variable {name} is set but pgolf does not use it")
        if (name in known or name.startswith(("PGOLF_", _ENV_REFUSED_PREFIX)) or name in ENV_SYSTEM_NAMES
                or name.startswith(ENV_SYSTEM_PREFIXES) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name)):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        family = next((p for p in ENV_FAMILIES if name.startswith(p)), None)
        if close:
            out.append(f"environment variable {name} is not a pgolf setting; did you mean {close[0]}? "
                       f"(ignored)")
        elif family:
            kin = [k for k in used if k.startswith(family)]
            also = f"; the {family}* names pgolf knows: {', '.join(kin)}" if kin else ""
            out.append(f"environment variable {name} is not a pgolf setting (ignored){also}")
    return out
