"""One typed config tree for everything pgolf does.

Sources, lowest precedence first: dataclass defaults < preset TOML < --config TOML <
environment variables (the challenge's reference names, plus PGOLF_SECTION_FIELD) <
--set section.field=value flags. Every field has a default, a type and a one-line doc
(the `doc` metadata), so the effective config can be printed, saved and diffed.
"""

import dataclasses
import hashlib
import importlib.resources
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pgolf.config_checks import (config_field_problems, config_layer_list, config_problems, config_world_size_problem,
                                 env_name_warnings, env_refusals)
from pgolf.config_tree import ARCH_DEFAULTS, Config
from pgolf.errors import PgolfError


class ConfigError(PgolfError, ValueError):
    """A config value, key, preset or file that cannot be used as given (a ValueError too, for
    callers that caught it as one)."""


# The reference train_gpt.py environment variables and the field each one sets.
ENV_MAP: dict[str, str] = {
    "DATA_PATH": "data.path", "TOKENIZER_PATH": "data.tokenizer_path",
    "RUN_ID": "run.run_id", "SEED": "run.seed", "ITERATIONS": "run.iterations",
    "MAX_WALLCLOCK_SECONDS": "run.max_wallclock_seconds",
    "TRAIN_BATCH_TOKENS": "run.train_batch_tokens", "TRAIN_SEQ_LEN": "run.train_seq_len",
    "VAL_LOSS_EVERY": "run.val_loss_every", "TRAIN_LOG_EVERY": "run.train_log_every",
    "VAL_BATCH_SIZE": "eval.batch_tokens",
    "WARMUP_STEPS": "schedule.warmup_steps", "WARMDOWN_ITERS": "schedule.warmdown_iters",
    "VOCAB_SIZE": "model.vocab_size", "NUM_LAYERS": "model.num_layers",
    "MODEL_DIM": "model.model_dim", "NUM_HEADS": "model.num_heads",
    "NUM_KV_HEADS": "model.num_kv_heads", "MLP_MULT": "model.mlp_mult",
    "TIE_EMBEDDINGS": "model.tie_embeddings", "TIED_EMBED_INIT_STD": "model.tied_embed_init_std",
    "ROPE_BASE": "model.rope_base", "LOGIT_SOFTCAP": "model.logit_softcap",
    "QK_GAIN_INIT": "model.qk_gain_init", "ROPE_DIMS": "model.rope_dims",
    "ROPE_TRAIN_LEN": "model.rope_train_len",
    "BIGRAM_VOCAB_SIZE": "model.bigram_vocab_size", "BIGRAM_DIM": "model.bigram_dim",
    "XSA_LAST_N": "model.xsa_last_n", "LN_SCALE": "model.ln_scale",
    "VE_ENABLED": "model.ve_enabled", "VE_DIM": "model.ve_dim", "VE_LAYERS": "model.ve_layers",
    "SMEAR_ENABLED": "model.smear", "LEAKY_SLOPE": "model.leaky_slope",
    "EMBED_LR": "optim.embed_lr", "HEAD_LR": "optim.head_lr",
    "TIED_EMBED_LR": "optim.tied_embed_lr", "MATRIX_LR": "optim.matrix_lr",
    "SCALAR_LR": "optim.scalar_lr", "MUON_MOMENTUM": "optim.muon_momentum",
    "MUON_BACKEND_STEPS": "optim.muon_backend_steps",
    "MUON_MOMENTUM_WARMUP_START": "optim.muon_momentum_warmup_start",
    "MUON_MOMENTUM_WARMUP_STEPS": "optim.muon_momentum_warmup_steps",
    "MUON_WD": "optim.muon_wd", "ADAM_WD": "optim.adam_wd",
    "BETA1": "optim.beta1", "BETA2": "optim.beta2", "ADAM_EPS": "optim.adam_eps",
    "GRAD_CLIP_NORM": "optim.grad_clip_norm",
    "EMA_ENABLED": "schedule.ema_enabled", "EMA_DECAY": "schedule.ema_decay",
    "SWA_ENABLED": "schedule.swa_enabled", "SWA_EVERY": "schedule.swa_every",
    "WD_TAPER_START_FRAC": "schedule.wd_taper_start", "WD_TAPER_FINAL_MULT": "schedule.wd_taper_final_mult",
    "LATE_QAT_THRESHOLD": "quant.late_qat_threshold",
    "EVAL_STRIDE": "eval.stride", "EVAL_SEQ_LEN": "eval.seq_len",
    "TTT_ENABLED": "eval.ttt_enabled", "TTT_LR": "eval.ttt_lr", "TTT_EPOCHS": "eval.ttt_epochs",
    "TTT_CHUNK_TOKENS": "eval.ttt_chunk_tokens", "TTT_FREEZE_BLOCKS": "eval.ttt_freeze_blocks",
    "TTT_MOMENTUM": "eval.ttt_momentum", "TTT_BATCH_SEQS": "eval.ttt_batch_seqs",
    "TTT_GRAD_CLIP": "eval.ttt_grad_clip",
    "TTT_LORA_RANK": "eval.ttt_lora_rank", "TTT_LORA_ALPHA": "eval.ttt_lora_alpha",
    "TTT_LORA_LR": "eval.ttt_lora_lr", "TTT_BETA1": "eval.ttt_lora_beta1", "TTT_BETA2": "eval.ttt_lora_beta2",
    "TTT_WEIGHT_DECAY": "eval.ttt_lora_wd", "TTT_CHUNK_SIZE": "eval.ttt_lora_chunk",
    "TTT_GRAD_STEPS": "eval.ttt_lora_steps", "TTT_WARM_START_A": "eval.ttt_lora_warm_a",
    "TTT_BATCH_SIZE": "eval.ttt_lora_batch", "TTT_EVAL_SEQ_LEN": "eval.ttt_lora_eval_seq_len",
    "TTT_K_LORA": "eval.ttt_lora_k", "TTT_O_LORA": "eval.ttt_lora_o", "TTT_MLP_LORA": "eval.ttt_lora_mlp",
    "GLOBAL_TTT_RESPECT_DOC_BOUNDARIES": "eval.ttt_global_doc_mask",
    "PHASED_TTT_PREFIX_DOCS": "eval.ttt_phased_prefix_docs", "PHASED_TTT_NUM_PHASES": "eval.ttt_phased_phases",
    "SLOT_LR": "eval.slot_lr", "SLOT_STEPS": "eval.slot_steps",
    "EMBED_WD": "optim.embed_wd", "GPTQ_RESERVE_SECONDS": "quant.gptq_reserve_seconds",
    "ENABLE_LOOPING_AT": "model.loop_enable_at", "MUON_ROW_NORMALIZE": "optim.muon_row_norm",
    "MATRIX_BITS": "quant.matrix_bits", "EMBED_BITS": "quant.embed_bits",
    "MATRIX_CLIP_SIGMAS": "quant.sdclip_k_matrix", "EMBED_CLIP_SIGMAS": "quant.sdclip_k_embed",
    "ATTN_CLIP_SIGMAS": "quant.sdclip_k_attn", "MLP_CLIP_SIGMAS": "quant.sdclip_k_mlp",
    "LQER_RANK": "quant.lqer_rank", "LQER_TOP_K": "quant.lqer_top_k", "LQER_FACTOR_BITS": "quant.lqer_bits",
    "LQER_ASYM_GROUP": "quant.lqer_asym_group", "GATED_ATTN_QUANT_GATE": "quant.gate_int8",
}

# Reference names with a translated meaning rather than a plain field.
ENV_SPECIAL = ("SLOT_ENABLED", "LATE_QAT", "WARMDOWN_FRAC", "MIN_LR", "LQER_ENABLED", "LQER_ASYM_ENABLED")
# LQER_ENABLED=1 without a rank turns LQER on at the reference's LQER_RANK default.
_LQER_DEFAULT_RANK = 4

# pgolf's own variables that set no config field: the corpus cache, tracebacks, the fault-injection
# test hook, and the fused MLP kernel variant (pgolf.kernels.leaky_mlp).
PGOLF_KNOBS = ("PGOLF_CACHE", "PGOLF_TRACEBACK", "PGOLF_FAULT_AFTER_STEP", "PGOLF_MLP_KERNEL")

# Names that appear in reference run commands but have no effect there or here; setting
# one is reported so nobody believes it did something.
ENV_KNOWN_UNUSED = ("SWA_START_FRAC", "MTP_NUM_HEADS", "MTP_LOSS_WEIGHT", "DTG_ENABLED",
                    "TRIGRAM_ENABLED", "QAT_ENABLED", "NCCL_IB_DISABLE")


def config_sections(cfg: Config) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _coerce(raw: Any, ftype: Any, key: str) -> Any:
    """Turn a TOML/env/flag value into the field's declared type."""
    if get_origin(ftype) is Literal:
        # Read as the type of the enum's values; which values are allowed is checked once, with
        # every other rule, when the config is finalized (config_checks).
        ftype = type(get_args(ftype)[0])
    tname = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    base = tname.replace(" | None", "").strip()
    if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null") and "None" in tname):
        if "None" in tname:
            return None
        raise ConfigError(f"{key}: a value is required (type {base})")
    try:
        if base == "bool":
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if base == "int":
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(float(raw)) if isinstance(raw, str) and "e" in raw.lower() else int(raw)
        if base == "float":
            return float(raw)
        if base == "str":
            return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {raw!r} as {base}") from None
    raise ConfigError(f"{key}: unsupported field type {tname}")


def set_value(cfg: Config, key: str, raw: Any) -> None:
    """Set `section.field` from a raw value, with type coercion and a clear error."""
    if "." not in key:
        raise ConfigError(f"config key {key!r} must look like section.field (e.g. run.seed)")
    sec_name, fname = key.split(".", 1)
    sec = config_sections(cfg).get(sec_name)
    if sec is None:
        raise ConfigError(f"unknown config section {sec_name!r}; known: {', '.join(config_sections(cfg))}")
    fields = {f.name: f for f in dataclasses.fields(sec)}
    if fname not in fields:
        raise ConfigError(f"unknown config field {key!r}; see `pgolf info --preset smoke` for the list")
    setattr(sec, fname, _coerce(raw, fields[fname].type, key))


def apply_mapping(cfg: Config, data: dict[str, Any], source: str) -> None:
    for sec_name, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: top-level key {sec_name!r} must be a [section] table")
        for fname, raw in values.items():
            try:
                set_value(cfg, f"{sec_name}.{fname}", raw)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None


def preset_names() -> list[str]:
    root = importlib.resources.files("pgolf") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_preset_text(name: str) -> str:
    path = importlib.resources.files("pgolf") / "presets" / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return path.read_text()


def load_toml_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing TOML file to --config")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e}); fix the file or drop --config") from None


def read_config_file(path: str | Path) -> Config:
    """A saved run config (config.toml), as data, with one-line errors naming the file."""
    p = Path(path)
    try:
        return config_from_toml(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not a readable TOML config ({e}); restore the run's config.toml") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror})") from None
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def apply_env(cfg: Config, env: dict[str, str]) -> list[str]:
    """Apply reference env vars and PGOLF_SECTION_FIELD vars; return one warning per variable
    that is set but not used. A reference feature pgolf lacks, asked for, is a ConfigError."""
    refused = env_refusals(env)
    if refused:
        raise ConfigError(refused[0])
    warnings = env_name_warnings(env, [*ENV_MAP, *ENV_SPECIAL], ENV_KNOWN_UNUSED)
    for name, field_key in ENV_MAP.items():
        if name in env:
            set_value(cfg, field_key, env[name])
    if "SLOT_ENABLED" in env:
        cfg.eval.slot_mode = "batch" if _coerce(env["SLOT_ENABLED"], "bool", "SLOT_ENABLED") else "off"
    if "LATE_QAT" in env and not _coerce(env["LATE_QAT"], "bool", "LATE_QAT"):
        cfg.quant.late_qat_threshold = 0.0
    # #1855's schedule: WARMDOWN_FRAC is a fraction of training (warmdown_mode frac) and MIN_LR
    # floors the multiplier with max(), not by rescaling it.
    if "WARMDOWN_FRAC" in env:
        set_value(cfg, "schedule.warmdown_frac", env["WARMDOWN_FRAC"])
        cfg.schedule.warmdown_mode = "frac"
    if "MIN_LR" in env:
        set_value(cfg, "schedule.min_lr_mult", env["MIN_LR"])
        cfg.schedule.min_lr_form = "max"
    if "LQER_ENABLED" in env:
        on = _coerce(env["LQER_ENABLED"], "bool", "LQER_ENABLED")
        cfg.quant.lqer_rank = (cfg.quant.lqer_rank or _LQER_DEFAULT_RANK) if on else 0
    if "LQER_ASYM_ENABLED" in env:
        asym = _coerce(env["LQER_ASYM_ENABLED"], "bool", "LQER_ASYM_ENABLED")
        cfg.quant.lqer_format = "asym" if asym else "sym"
    sections = config_sections(cfg)
    for name, raw in env.items():
        if not name.startswith("PGOLF_"):
            continue
        rest = name[len("PGOLF_"):].lower()
        sec = next((s for s in sections if rest.startswith(s + "_")), None)
        fname = rest[len(sec) + 1:] if sec else ""
        if sec and fname in {f.name for f in dataclasses.fields(sections[sec])}:
            set_value(cfg, f"{sec}.{fname}", raw)
        elif name not in PGOLF_KNOBS:
            warnings.append(f"environment variable {name} is set but matches no config field "
                            f"(expected PGOLF_<SECTION>_<FIELD>, e.g. PGOLF_RUN_SEED)")
    return warnings


def resolve_config(preset: str | None = None, config_file: str | None = None,
                   env: dict[str, str] | None = None, sets: list[str] | None = None
                   ) -> tuple[Config, list[str]]:
    """Build the effective config; returns it with warnings about ignored inputs."""
    cfg = Config()
    if preset:
        apply_mapping(cfg, tomllib.loads(load_preset_text(preset)), f"preset {preset}")
    if config_file:
        apply_mapping(cfg, load_toml_file(config_file), config_file)
    warnings = apply_env(cfg, dict(os.environ) if env is None else env)
    apply_sets(cfg, sets or [])
    finalize_config(cfg)
    return cfg, warnings


def apply_sets(cfg: Config, sets: list[str]) -> None:
    """Apply `section.field=value` overrides (the --set flags)."""
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        key, raw = item.split("=", 1)
        set_value(cfg, key.strip(), raw.strip())


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """'9,10' or '-2,-1' -> sorted absolute block indices, validated."""
    layers, problem = config_layer_list(spec, num_layers)
    if problem:
        raise ConfigError(problem)
    return layers


def _config_raise(problems: list[str]) -> None:
    # One line: the first problems, so a user fixing a hand-written config sees several at once.
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError("; ".join(problems[:3]) + more)


def validate_config(cfg: Config) -> None:
    """Every rule of config_checks (types, enums, ranges, cross-field); ConfigError naming the field."""
    _config_raise(config_problems(cfg))


def check_world_size(cfg: Config, world_size: int) -> None:
    """The rule only a launch can check: run.accum_world must divide by the world size."""
    _config_raise([p for p in [config_world_size_problem(cfg, world_size)] if p])


def finalize_config(cfg: Config) -> None:
    """Fill arch defaults and eval.seq_len, then validate_config: every entry point calls this
    before any work, so a bad value fails first."""
    _config_raise(config_field_problems(cfg))  # the fill below reads arch and divides by num_heads
    m = cfg.model
    head_dim = m.model_dim // m.num_heads
    for k, v in ARCH_DEFAULTS[m.arch].items():
        if getattr(m, k) is None:
            # An arch default never exceeds a small model: tiny presets keep working.
            setattr(m, k, min(v, head_dim) if k == "rope_dims" else v)
    m.xsa_last_n = min(m.xsa_last_n, m.num_layers)
    if cfg.eval.seq_len == 0:
        cfg.eval.seq_len = cfg.run.train_seq_len
    validate_config(cfg)


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return {name: {k: v for k, v in dataclasses.asdict(sec).items() if v is not None}
            for name, sec in config_sections(cfg).items()}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def config_to_toml(cfg: Config) -> str:
    lines = []
    for name, values in config_to_dict(cfg).items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        lines.append("")
    return "\n".join(lines)


def config_from_toml(text: str) -> Config:
    cfg = Config()
    apply_mapping(cfg, tomllib.loads(text), "saved config")
    finalize_config(cfg)
    return cfg


def shippable_config(cfg: Config) -> Config:
    """The config without what only holds on this machine (data paths, run folder, run id):
    what a shipped train_gpt.py and an artifact carry."""
    data = dataclasses.replace(cfg.data, path="", tokenizer_path="", cache_dir="")
    return dataclasses.replace(cfg, data=data, run=dataclasses.replace(cfg.run, out_dir="", run_id=""))


def config_differences(a: Config, b: Config) -> list[str]:
    """The "section.field" names whose values differ between two configs, sorted."""
    da, db = config_to_dict(a), config_to_dict(b)
    return sorted(f"{sec}.{k}" for sec in da for k in da[sec] if da[sec][k] != db[sec][k])


# Fields that say where a run's inputs and outputs live on this machine, not what it computes.
MACHINE_FIELDS = ("data.path", "data.tokenizer_path", "data.cache_dir", "run.out_dir", "run.run_id")


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(config_to_toml(cfg).encode()).hexdigest()[:16]
