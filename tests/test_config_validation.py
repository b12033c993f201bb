"""Config validation when the config is built: enums, ranges, cross-field rules, the world
size, and the environment names (near-misses warned, system names quiet, features pgolf
lacks refused). Every refusal is one line that names the field or variable."""

import dataclasses
import re
from typing import Literal, get_args, get_origin

import pytest

from pgolf.cli import main
from pgolf.config import (ConfigError, apply_env, check_world_size, finalize_config, preset_names, resolve_config,
                          validate_config)
from pgolf.config_tree import Config
from pgolf.errors import PgolfError


def refused(sets=(), env=None, preset="smoke") -> str:
    with pytest.raises(ConfigError) as e:
        resolve_config(preset, None, env or {}, list(sets))
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def literal_fields() -> dict[str, tuple]:
    cfg = Config()
    return {f"{s.name}.{f.name}": get_args(f.type) for s in dataclasses.fields(cfg)
            for f in dataclasses.fields(getattr(cfg, s.name)) if get_origin(f.type) is Literal}


# ---------------------------------------------------------------- enums

BAD_ENUMS = {
    "data.sampling": "random", "model.arch": "huge", "model.attn_backend": "flash", "model.embed_dtype": "fp16",
    "optim.grad_clip_mode": "both", "optim.muon_coeffs": "cubic", "schedule.warmdown_mode": "cosine", "schedule.export_weights": "best",
    "quant.matrix_method": "awq", "quant.clip_search": "column", "quant.compressor": "gzip",
    "quant.qat_scope": "all", "quant.code_form": "tiny", "quant.code_codec": "zip", "eval.slot_mode": "on", "run.device": "mps",
    "eval.ttt_kind": "chunky", "model.parallel_final": "both", "model.attn_gate": "on", "model.smear_kind": "token",
    "quant.calib_source": "val", "quant.clip_rule": "mse", "quant.clip_weighting": "fisher",
    "quant.code_order": "zigzag", "quant.fp16_layout": "packed",
    "schedule.min_lr_form": "lerp_max", "model.rope_precision": "fp16", "optim.muon_momentum_dtype": "fp16",
    "optim.muon_row_norm_eps": "none", "optim.muon_ns_norm_dtype": "fp64", "schedule.ema_form": "mean",
    "model.stream_dtype": "bf16",
    "quant.sdclip_std": "mad", "quant.gptq_numerics": "fp16", "quant.lqer_format": "int2",
    "eval.ttt_lora_method": "batched",
    "data.packing": "docs", "run.low_precision": "fp16",
    "model.fused_ce": "yes", "model.fused_mlp": "1",
    "quant.compressor_fallback": "zlib", "quant.calib_windows": "random", "quant.calib_attention": "masked",
    # Integer enums: the widths the quantizers implement.
    "quant.matrix_bits": "4", "quant.embed_bits": "32", "quant.attn_bits": "3", "quant.mlp_bits": "9",
    "quant.bigram_bits": "2", "quant.ve_bits": "12", "quant.lqer_bits": "16",
}


def _typed(key: str, raw: str):
    """The bad value as the field reads it (an integer enum reads '4' as 4)."""
    return type(literal_fields()[key][0])(raw)


def test_every_enum_like_field_is_a_literal_and_tested():
    assert set(literal_fields()) == set(BAD_ENUMS)


@pytest.mark.parametrize("key, bad", sorted(BAD_ENUMS.items()))
def test_bad_enum_value_names_field_and_allowed_values(key, bad):
    msg = refused([f"{key}={bad}"])
    assert msg == f"{key}: {_typed(key, bad)!r} is not one of {', '.join(map(str, literal_fields()[key]))}"


@pytest.mark.parametrize("key, bad", sorted(BAD_ENUMS.items()))
def test_bad_enum_set_directly_is_caught_by_finalize(key, bad):
    # Code that builds a Config by attribute never passes _coerce; validation still sees it.
    cfg = Config()
    sec, name = key.split(".")
    setattr(getattr(cfg, sec), name, _typed(key, bad))
    with pytest.raises(ConfigError, match=re.escape(f"{key}: {_typed(key, bad)!r} is not one of")):
        finalize_config(cfg)


def _outsiders(allowed: tuple) -> list:
    """Values no enum of this kind allows: an unknown word, or a neighbour of the largest width,
    a bool equal to a width and a float equal to one (same value, wrong type)."""
    if isinstance(allowed[0], str):
        return ["no-such-value", allowed[0].upper() + "x"]
    return [max(allowed) + 1, min(allowed) - 1, bool(allowed[0]), float(allowed[0])]


@pytest.mark.parametrize("key", sorted(literal_fields()))
def test_every_literal_field_of_the_tree_refuses_an_outsider_in_one_line(key):
    # Walks the tree, so a Literal field added later is covered without a table entry.
    allowed = literal_fields()[key]
    sec, name = key.split(".")
    for bad in _outsiders(allowed):
        cfg = Config()
        setattr(getattr(cfg, sec), name, bad)
        with pytest.raises(ConfigError) as e:
            finalize_config(cfg)
        assert str(e.value) == f"{key}: {bad!r} is not one of {', '.join(map(str, allowed))}"


@pytest.mark.parametrize("source", ["env", "pgolf_env", "set", "toml"])
def test_integer_enums_read_from_every_source(source, tmp_path):
    sets, env, path = [], {}, None
    if source == "env":
        env = {"MATRIX_BITS": "6", "EMBED_BITS": "7", "LQER_FACTOR_BITS": "5"}
    elif source == "pgolf_env":
        env = {"PGOLF_QUANT_MATRIX_BITS": "6", "PGOLF_QUANT_EMBED_BITS": "7", "PGOLF_QUANT_LQER_BITS": "5"}
    elif source == "set":
        sets = ["quant.matrix_bits=6", "quant.embed_bits=7", "quant.lqer_bits=5"]
    else:
        path = tmp_path / "c.toml"
        path.write_text("[quant]\nmatrix_bits = 6\nembed_bits = 7\nlqer_bits = 5\n")
    cfg, _ = resolve_config("smoke", str(path) if path else None, env, sets)
    assert (cfg.quant.matrix_bits, cfg.quant.embed_bits, cfg.quant.lqer_bits) == (6, 7, 5)
    assert all(type(v) is int for v in (cfg.quant.matrix_bits, cfg.quant.embed_bits, cfg.quant.lqer_bits))


def test_integer_enum_from_env_is_refused_naming_the_field():
    assert refused(env={"MATRIX_BITS": "4"}) == "quant.matrix_bits: 4 is not one of 5, 6, 7, 8, 16"
    assert refused(env={"MATRIX_BITS": "six"}) == "quant.matrix_bits: cannot read 'six' as int"


# Values that are only valid together with another setting (checked by a cross-field rule).
ENUM_COMPANIONS = {("quant.clip_weighting", "hessian"): ["quant.matrix_method=gptq"],
                   ("data.packing", "stream"): ["model.doc_mask=true"],
                   ("schedule.warmdown_mode", "time"): ["run.max_wallclock_seconds=300"]}


@pytest.mark.parametrize("key, value", [(k, v) for k, vs in sorted(literal_fields().items()) for v in vs])
def test_every_allowed_enum_value_validates(key, value):
    cfg, _ = resolve_config("smoke", None, {}, [f"{key}={value}"] + ENUM_COMPANIONS.get((key, value), []))
    sec, name = key.split(".")
    assert getattr(getattr(cfg, sec), name) == value


# ---------------------------------------------------------------- single-field ranges

RANGE_CASES = [
    ("model.model_dim", "0"), ("model.num_layers", "0"), ("model.num_heads", "0"), ("model.num_kv_heads", "0"),
    ("model.vocab_size", "1"), ("model.mlp_mult", "0"), ("model.rope_base", "0"), ("model.logit_softcap", "-1"),
    ("model.leaky_slope", "-0.5"), ("model.rope_dims", "-2"), ("model.rope_train_len", "-1"),
    ("model.bigram_vocab_size", "-1"), ("model.bigram_dim", "0"), ("model.ve_dim", "0"),
    ("model.xsa_last_n", "-1"), ("model.tied_embed_init_std", "-0.1"),
    ("optim.matrix_lr", "-0.01"), ("optim.head_lr", "-1"), ("optim.beta1", "1.0"), ("optim.beta2", "1.5"),
    ("optim.muon_momentum", "1.0"), ("optim.muon_momentum_warmup_start", "-0.1"), ("optim.adam_eps", "0"),
    ("optim.muon_backend_steps", "0"), ("optim.grad_clip_norm", "-1"), ("optim.muon_wd", "-0.1"),
    ("optim.muon_momentum_warmup_steps", "-1"),
    ("schedule.ema_decay", "1.0"), ("schedule.swa_every", "0"), ("schedule.swa_threshold", "1.5"),
    ("schedule.warmdown_iters", "-1"), ("schedule.warmup_steps", "-1"),
    ("quant.late_qat_threshold", "1.5"), ("quant.small_numel", "-1"), ("quant.max_artifact_bytes", "0"),
    ("eval.seq_len", "-1"), ("eval.batch_tokens", "0"), ("eval.stride", "-1"), ("eval.batch_seqs", "0"),
    ("eval.max_tokens", "-1"), ("eval.ttt_lr", "-0.1"), ("eval.ttt_epochs", "-1"), ("eval.ttt_chunk_tokens", "0"),
    ("eval.ttt_freeze_blocks", "-1"), ("eval.ttt_momentum", "1.0"), ("eval.ttt_batch_seqs", "0"),
    ("eval.ttt_grad_clip", "-1"), ("eval.slot_lr", "-1"), ("eval.slot_steps", "-1"), ("eval.slot_eps", "0"),
    ("eval.audit_tokens", "-1"), ("eval.budget_seconds", "-1"),
    ("run.iterations", "0"), ("run.iterations", "-5"), ("run.accum_world", "0"), ("run.accum_world", "-2"),
    ("run.train_seq_len", "0"), ("run.train_batch_tokens", "0"), ("run.max_wallclock_seconds", "-1"),
    ("run.val_loss_every", "-1"), ("run.train_log_every", "-1"), ("run.checkpoint_every", "-2"),
    # Not finite: float("nan") and float("inf") read fine, and would poison a run silently.
    ("optim.matrix_lr", "nan"), ("model.rope_base", "inf"), ("schedule.ema_decay", "nan"),
]


@pytest.mark.parametrize("key, bad", RANGE_CASES)
def test_out_of_range_value_names_field_value_and_range(key, bad):
    msg = refused([f"{key}={bad}"])
    assert msg.startswith(f"{key}: "), msg
    assert bad.lower() in msg.lower() and "use " in msg, msg


def test_several_problems_share_one_line():
    msg = refused(["model.model_dim=0", "run.iterations=0", "run.accum_world=0", "eval.batch_seqs=0"])
    assert "model.model_dim: 0" in msg and "run.iterations: 0" in msg and "(+1 more)" in msg


def test_issue_examples_no_longer_pass():
    assert refused(["model.model_dim=0"]).startswith("model.model_dim: 0")
    assert refused(["run.accum_world=0"]).startswith("run.accum_world: 0")
    assert refused(["quant.matrix_bits=3"]).startswith("quant.matrix_bits: 3")
    assert refused(env={"NUM_HEADS": "0"}).startswith("model.num_heads: 0")


# ---------------------------------------------------------------- cross-field rules

CROSS_CASES = [  # on the smoke preset: 4 layers, width 128, 4 heads / 2 KV, seq 256, accum 2, batch 4096
    (["model.model_dim=130"], "model.model_dim", "does not divide by model.num_heads"),
    (["model.num_kv_heads=3"], "model.num_kv_heads", "does not divide model.num_heads"),
    (["model.model_dim=132"], "model.model_dim", "odd"),
    (["model.rope_dims=7"], "model.rope_dims", "even number <= the head dim 32"),
    (["model.rope_dims=40"], "model.rope_dims", "even number <= the head dim 32"),
    (["model.mlp_mult=0.001"], "model.mlp_mult", "width 0"),
    (["model.bigram_vocab_size=1"], "model.bigram_vocab_size", ">= 2"),
    (["model.arch=record", "model.ve_layers=7"], "model.ve_layers", "out of range for 4 layers"),
    (["model.arch=record", "model.ve_layers=-5"], "model.ve_layers", "out of range for 4 layers"),
    (["model.arch=record", "model.ve_layers=a,b"], "model.ve_layers", "comma list"),
    (["run.train_batch_tokens=1000"], "run.train_batch_tokens", "multiple of 512"),
    (["run.accum_world=3"], "run.train_batch_tokens", "3 x 256 = 768"),
    (["run.train_seq_len=300"], "run.train_batch_tokens", "2 x 300 = 600"),
    (["run.train_batch_tokens=256"], "run.train_batch_tokens", "multiple of 512"),
    (["schedule.warmdown_mode=time", "run.max_wallclock_seconds=0"], "schedule.warmdown_mode", "wall-clock cap"),
    (["quant.compressor=zlib", "quant.level=12"], "quant.level", "0..9"),
    (["quant.compressor=lzma", "quant.level=-1"], "quant.level", "0..9"),
    (["quant.compressor=zstd", "quant.level=0"], "quant.level", "1..22"),
    (["quant.compressor=brotli", "quant.level=12"], "quant.level", "0..11"),
    (["quant.matrix_bits=16", "quant.late_qat_threshold=0.15"], "quant.late_qat_threshold", "matrix_bits 5..8"),
    (["eval.stride=300"], "eval.stride", "1..256"),
    (["eval.seq_len=64", "eval.stride=65"], "eval.stride", "1..64"),
    (["eval.max_tokens=100"], "eval.max_tokens", ">= 256"),
    (["eval.ttt_freeze_blocks=5"], "eval.ttt_freeze_blocks", "0..4"),
]


@pytest.mark.parametrize("sets, key, why", CROSS_CASES)
def test_cross_field_rule(sets, key, why):
    msg = refused(sets)
    assert msg.startswith(f"{key}: ") and why in msg, msg


@pytest.mark.parametrize("sets", [
    ["run.accum_world=1", "run.train_batch_tokens=256"],
    ["run.train_seq_len=512", "run.train_batch_tokens=8192"],
    ["eval.stride=256"], ["eval.seq_len=8192", "eval.max_tokens=0"],  # no RoPE limit on the eval window
    ["model.model_dim=136", "model.num_heads=4"], ["model.num_kv_heads=4"], ["model.num_kv_heads=1"],
    ["eval.ttt_freeze_blocks=4"], ["quant.matrix_bits=16", "quant.embed_bits=16"],
    ["schedule.warmdown_mode=time", "run.max_wallclock_seconds=300"], ["quant.compressor=zstd", "quant.level=22"],
])
def test_edges_that_work_are_accepted(sets):
    resolve_config("smoke", None, {}, sets)


def test_presets_and_default_config_validate():
    for name in preset_names():
        cfg, _ = resolve_config(name, None, {}, [])
        validate_config(cfg)
    cfg = Config()
    finalize_config(cfg)
    validate_config(cfg)


# The tiny configs other tests build (tests/_train_helpers.py, test_e2e.py, test_bench.py,
# tests/gpu/_gpu_helpers.py): validation must keep them working.
TINY_LOOP = ["model.num_layers=2", "model.model_dim=32", "model.num_heads=2", "model.num_kv_heads=1",
             "model.bigram_dim=8", "model.ve_dim=8", "model.bigram_vocab_size=128", "run.iterations=6",
             "run.train_batch_tokens=512", "run.train_seq_len=64", "run.accum_world=1",
             "run.max_wallclock_seconds=0", "run.train_log_every=2", "schedule.warmup_steps=3",
             "eval.max_tokens=512", "eval.batch_tokens=512", "eval.audit_tokens=256"]
TINY_E2E = ["model.num_layers=2", "model.model_dim=32", "model.num_heads=2", "model.num_kv_heads=1",
            "model.bigram_dim=8", "model.ve_dim=8", "model.bigram_vocab_size=128",
            "run.iterations=12", "run.train_batch_tokens=1024", "run.train_seq_len=64",
            "run.max_wallclock_seconds=0", "run.train_log_every=4", "schedule.warmup_steps=2",
            "schedule.warmdown_iters=6", "eval.max_tokens=2048", "eval.batch_tokens=2048",
            "eval.audit_tokens=320", "eval.batch_seqs=8"]
RECORD_E2E = ["model.compile=false", "model.ve_layers=-1", "run.accum_world=2", "schedule.swa_every=2",
              "eval.stride=16", "eval.seq_len=64", "eval.ttt_chunk_tokens=512", "eval.ttt_batch_seqs=4",
              "eval.ttt_epochs=1", "run.checkpoint_every=4", "eval.max_tokens=1024"]
TINY_BENCH = ["model.num_layers=2", "model.model_dim=64", "model.num_heads=4", "model.num_kv_heads=2",
              "model.mlp_mult=2.0", "model.bigram_dim=16", "model.ve_dim=16", "run.train_seq_len=32",
              "run.train_batch_tokens=256", "run.accum_world=2", "run.device=cpu"]
SMALL_RECORD = ["model.num_layers=4", "model.model_dim=128", "model.num_heads=4", "model.num_kv_heads=2",
                "model.bigram_dim=32", "model.ve_dim=32", "model.xsa_last_n=2", "model.ve_layers=-2,-1",
                "model.bigram_vocab_size=256"]


@pytest.mark.parametrize("preset, sets", [
    ("smoke", TINY_LOOP), ("smoke", TINY_LOOP + ["model.arch=record"]),
    ("smoke", TINY_LOOP + ["model.arch=record", "model.compile=true", "run.iterations=8",
                           "schedule.warmdown_mode=iters", "quant.late_qat_threshold=0.5", "quant.matrix_bits=6"]),
    ("smoke", TINY_E2E), ("smoke", TINY_E2E + ["model.arch=record", "run.checkpoint_every=4"]),
    ("record_1128", TINY_E2E + RECORD_E2E), ("smoke", TINY_BENCH), ("smoke", TINY_BENCH + ["model.arch=record"]),
    ("record_1128", SMALL_RECORD + ["run.train_seq_len=64", "eval.seq_len=64", "run.accum_world=1",
                                    "run.train_batch_tokens=128", "quant.late_qat_threshold=0.15"]),
    ("record_1128", SMALL_RECORD + ["run.train_seq_len=128", "eval.seq_len=128"]),
])
def test_tiny_configs_of_other_tests_validate(preset, sets):
    resolve_config(preset, None, {}, sets)


# ---------------------------------------------------------------- world size

@pytest.mark.parametrize("accum, world, ok", [
    (8, 1, True), (8, 2, True), (8, 8, True), (1, 1, True),
    (8, 3, False), (2, 4, False), (6, 4, False), (8, 0, False),
])
def test_check_world_size(accum, world, ok):
    sets = [f"run.accum_world={accum}", f"run.train_batch_tokens={accum * 256}"]
    cfg, _ = resolve_config("smoke", None, {}, sets)
    if ok:
        check_world_size(cfg, world)
        return
    want = rf"^run.accum_world: {accum} is not a multiple of the world size {world};"
    with pytest.raises(ConfigError, match=want):
        check_world_size(cfg, world)


def test_config_error_is_a_pgolf_error_and_a_value_error():
    assert issubclass(ConfigError, PgolfError) and issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------- environment variables

@pytest.mark.parametrize("name, meant", [
    ("NUM_LAYER", "NUM_LAYERS"), ("MATRIX_LRR", "MATRIX_LR"), ("TTT_EPOCH", "TTT_EPOCHS"),
    ("WARMDOWN_ITER", "WARMDOWN_ITERS"), ("EMA_DECY", "EMA_DECAY"), ("ITERATION", "ITERATIONS"),
    ("EVAL_STRIDES", "EVAL_STRIDE"), ("MUON_MOMENTUN", "MUON_MOMENTUM"), ("SLOT_ENABLE", "SLOT_ENABLED"),
    ("BIGRAM_VOCAB", "BIGRAM_VOCAB_SIZE"), ("TRAIN_SEQ_LENGTH", "TRAIN_SEQ_LEN"), ("NUM_KV_HEAD", "NUM_KV_HEADS"),
    ("GATED_ATTENTON", "GATED_ATTENTION"),
])
def test_misspelled_reference_variable_is_warned_with_suggestion(name, meant):
    cfg, warnings = resolve_config("smoke", None, {name: "3"}, [])
    assert warnings == [f"environment variable {name} is not a pgolf setting; did you mean {meant}? (ignored)"]
    assert cfg == resolve_config("smoke", None, {}, [])[0]


@pytest.mark.parametrize("name", [
    "TTT_OPTIMIZER", "SLOT_WARMUP", "QAT_BITS", "EMA_EVERY", "SWA_START_STEP", "MUON_NESTEROV_OFF", "ADAM_BETAS",
    "ROPE_SCALING", "VE_SCALE", "BIGRAM_HASH_SEED", "EVAL_TEMPERATURE", "TRAIN_SHARDS", "WARMDOWN_FRACTION",
    "XSA_ALL_LAYERS", "GPTQ_BLOCK_SIZE", "MTP_EXTRA", "TRIGRAM_VOCAB_SIZE",
])
def test_unknown_member_of_a_setting_family_is_warned(name):
    _, warnings = resolve_config("smoke", None, {name: "1"}, [])
    assert len(warnings) == 1 and warnings[0].startswith(f"environment variable {name} is not a pgolf setting")


@pytest.mark.parametrize("name", [
    "PATH", "HOME", "USER", "SHELL", "LANG", "TERM", "TMPDIR", "HOSTNAME", "CUDA_VISIBLE_DEVICES", "CUDA_HOME",
    "NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_LOGS",
    "TORCHINDUCTOR_CACHE_DIR",
    "TORCHELASTIC_RUN_ID", "PYTORCH_CUDA_ALLOC_CONF", "PYTHONPATH", "PYTHONHASHSEED", "LOCAL_RANK", "RANK",
    "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "HF_HOME", "TRITON_CACHE_DIR",
    "MAX_JOBS", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "XDG_CACHE_HOME", "SSH_AUTH_SOCK", "num_layers", "PGOLF_CACHE",
    "PGOLF_TRACEBACK",
])
def test_system_variables_are_not_warned(name):
    assert resolve_config("smoke", None, {name: "1"}, [])[1] == []


def test_one_warning_per_variable():
    env = {"NUM_LAYER": "3", "TTT_OPTIMIZER": "adamw", "MTP_NUM_HEADS": "2", "PGOLF_NOPE": "1", "PATH": "/bin"}
    warnings = resolve_config("smoke", None, env, [])[1]
    assert len(warnings) == 4
    for name in ("NUM_LAYER", "TTT_OPTIMIZER", "MTP_NUM_HEADS", "PGOLF_NOPE"):
        assert sum(name in w for w in warnings) == 1


@pytest.mark.parametrize("name, value", [
    ("GATED_ATTENTION", "1"), ("GATED_ATTENTION", "yes"), ("VALUE_RESIDUAL", "1"), ("LAWA_ENABLED", "1"),
    ("LAWA_K", "5"), ("LAWA_FREQ", "50"), ("LAWA_START_FRAC", "0.5"), ("MUON_BETA2", "0.99"), ("MUON_BETA2", "x"),
])
def test_reference_features_pgolf_lacks_are_refused(name, value):
    msg = refused(env={name: value})
    assert msg.startswith(f"environment variable {name}={value!r} asks for ") and "pgolf does not implement" in msg


@pytest.mark.parametrize("name, value", [
    ("GATED_ATTENTION", "0"), ("VALUE_RESIDUAL", "0"), ("LAWA_ENABLED", "0"), ("LAWA_K", "10"),
    ("LAWA_FREQ", "100"), ("MUON_BETA2", "0.95"), ("MUON_BETA2", ""), ("LAWA_ENABLED", ""), ("LAWA_START_FRAC", ""),
])
def test_reference_features_at_their_default_are_accepted_quietly(name, value):
    cfg, warnings = resolve_config("smoke", None, {name: value}, [])
    assert warnings == [] and cfg == resolve_config("smoke", None, {}, [])[0]


def test_refusal_comes_from_apply_env_so_the_bundled_script_refuses_too():
    with pytest.raises(ConfigError, match="GATED_ATTENTION"):
        apply_env(Config(), {"GATED_ATTENTION": "1"})


# ---------------------------------------------------------------- the command line: one line, exit 2

@pytest.mark.parametrize("argv, env, key", [
    (["info", "--set", "model.num_heads=0"], {}, "model.num_heads"),
    (["info", "--set", "run.iterations=0"], {}, "run.iterations"),
    (["bundle", "--set", "quant.matrix_bits=3", "--out", "x.py"], {}, "quant.matrix_bits"),
    (["info"], {"GATED_ATTENTION": "1"}, "GATED_ATTENTION"),
    (["info"], {"NUM_KV_HEADS": "3"}, "model.num_kv_heads"),
])
def test_cli_reports_one_line_and_exit_2(argv, env, key, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGOLF_TRACEBACK", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and key in err and "Traceback" not in err, err
    assert not (tmp_path / "x.py").exists()


def test_every_number_field_has_a_range_or_is_knowingly_free():
    # docs/cli.md promises ">= 0 unless listed"; a new numeric field must pick its rule.
    from pgolf.config_checks import CONFIG_RANGES
    free = {"model.qk_gain_init", "run.seed", "quant.level"}
    cfg = Config()
    numeric = {f"{s.name}.{f.name}" for s in dataclasses.fields(cfg)
               for f in dataclasses.fields(getattr(cfg, s.name))
               if any(t in (int, float) for t in (get_args(f.type) or (f.type,)))}
    assert numeric - free == set(CONFIG_RANGES)
