"""Config: precedence, env-var mapping, coercion, TOML round trip and clear errors."""

import pytest

from pgolf.config import ConfigError, config_from_toml, config_to_toml, preset_names, resolve_config


def test_presets_present():
    assert {"smoke", "baseline", "record_549", "record_1128"} <= set(preset_names())


def test_precedence_preset_file_env_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[run]\nseed = 2\niterations = 7\n[model]\nnum_layers = 5\n")
    env = {"SEED": "3", "NUM_LAYERS": "6"}
    cfg, _ = resolve_config("smoke", str(f), env, ["run.seed=4"])
    assert cfg.run.seed == 4            # flag beats env
    assert cfg.model.num_layers == 6    # env beats file
    assert cfg.run.iterations == 7      # file beats preset
    assert cfg.model.model_dim == 128   # preset beats defaults
    cfg, _ = resolve_config("smoke", str(f), {}, [])
    assert cfg.run.seed == 2 and cfg.model.num_layers == 5


def test_reference_env_names_map_onto_fields():
    env = {"NUM_LAYERS": "11", "MATRIX_LR": "0.025", "TTT_LR": "0.002", "SLOT_ENABLED": "1",
           "VE_LAYERS": "9,10", "LN_SCALE": "1", "EMA_ENABLED": "1", "EMA_DECAY": "0.99",
           "LATE_QAT_THRESHOLD": "0.15", "EVAL_STRIDE": "64", "TTT_ENABLED": "1", "ITERATIONS": "9000"}
    cfg, warnings = resolve_config("baseline", None, env, [])
    assert cfg.model.num_layers == 11 and cfg.optim.matrix_lr == 0.025
    assert cfg.eval.ttt_lr == 0.002 and cfg.eval.slot_mode == "batch" and cfg.eval.ttt_enabled
    assert cfg.model.ve_layers == "9,10" and cfg.model.ln_scale is True
    assert cfg.schedule.ema_enabled and cfg.schedule.ema_decay == 0.99
    assert cfg.quant.late_qat_threshold == 0.15 and cfg.eval.stride == 64
    assert cfg.run.iterations == 9000 and warnings == []


def test_unused_names_are_reported_not_ignored():
    env = {"MTP_NUM_HEADS": "2", "PGOLF_RUN_SEED": "9", "PGOLF_NOPE": "1"}
    cfg, warnings = resolve_config("smoke", None, env, [])
    assert cfg.run.seed == 9
    assert any("MTP_NUM_HEADS" in w for w in warnings)
    assert any("PGOLF_NOPE" in w for w in warnings)


def test_arch_defaults_fill_only_unset_fields():
    cfg, _ = resolve_config("smoke", None, {}, ["model.arch=record", "model.xsa_last_n=1"])
    assert cfg.model.bigram_vocab_size == 1536 and cfg.model.smear and cfg.model.xsa_last_n == 1
    base, _ = resolve_config("smoke", None, {}, [])
    assert base.model.bigram_vocab_size == 0 and not base.model.smear


@pytest.mark.parametrize("sets, msg", [
    (["run.seed=abc"], "cannot read 'abc' as int"),
    (["run.nope=1"], "unknown config field"),
    (["nope.x=1"], "unknown config section"),
    (["model.arch=huge"], r"model.arch: .huge. is not one of baseline, record"),
    (["runseed"], "expected section.field=value"),
])
def test_bad_values_give_one_line_errors(sets, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        resolve_config("smoke", None, {}, sets)
    assert "\n" not in str(e.value)


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        resolve_config("nope", None, {}, [])
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(None, str(bad), {}, [])


def test_toml_round_trip_of_effective_config():
    cfg, _ = resolve_config("record_1128", None, {}, ["eval.slot_lr=0.004"])
    again = config_from_toml(config_to_toml(cfg))
    assert again == cfg
