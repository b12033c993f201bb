"""The CaseOps record_1855 recipes (bench/recipes/caseops_1855*.sh) are sound without training:
their commands resolve against the preset, keep the record's architecture, and every quant
variant of the table validates on the run's config."""

import copy
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from pgolf.bench_quant import parse_quant_variant
from pgolf.config import apply_sets, finalize_config, resolve_config

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bench" / "recipes" / "caseops_1855.sh"
QUANT = REPO / "bench" / "recipes" / "caseops_1855_quant.sh"


def dry_run(script: Path, *args: str, **env: str) -> list[str]:
    full = {**os.environ, "DRY_RUN": "1", "PYTHONPATH": str(REPO / "src"), **env}
    res = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=full, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("python -m pgolf")]
    assert len(lines) == 1, res.stdout
    return shlex.split(lines[0])


def option_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def train_config(**env: str):
    argv = dry_run(TRAIN, "runs/x", **env)
    assert argv[3:6] == ["train", "--preset", "record_1855"]
    cfg, warnings = resolve_config("record_1855", env={}, sets=option_values(argv, "--set"))
    assert warnings == []
    return cfg


@pytest.mark.parametrize("script", [TRAIN, QUANT])
def test_recipes_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.mark.parametrize("env", [{}, {"STEPS": "24", "DIM": "128", "HEADS": "4", "KV_HEADS": "2", "BATCH": "4096",
                                 "SEQ": "256", "EVAL_TOKENS": "16384"}])
def test_train_recipe_keeps_the_record_architecture_at_reduced_width(env):
    cfg = train_config(**env)
    ref, _ = resolve_config("record_1855", env={}, sets=[])
    m = cfg.model
    assert m.model_dim == int(env.get("DIM", 192)) < ref.model.model_dim
    for field in ("num_layers", "num_loops", "loop_start", "loop_end", "loop_enable_at", "parallel_start",
                  "attn_gate", "smear", "doc_mask", "xsa_last_n"):
        assert getattr(m, field) == getattr(ref.model, field), field
    assert cfg.run.iterations == int(env.get("STEPS", 200)) and cfg.run.max_wallclock_seconds == 0
    # WARMDOWN_FRAC 0.85 of the steps: without a wall-clock cap, frac runs on steps / iterations.
    assert cfg.schedule.warmdown_mode == "frac" and cfg.schedule.warmdown_frac == 0.85
    assert not m.compile and cfg.data.path.endswith("fineweb_legal_sp8192_caseops")
    assert cfg.quant.matrix_method == "gptq" and cfg.quant.lqer_rank > 0 and cfg.quant.small_numel <= 8192
    assert cfg.eval.ttt_enabled and cfg.eval.ttt_kind == "phased"
    e = cfg.eval  # the record's whole-batch plain eval must find one whole batch in the slice
    assert e.batch_tokens // (cfg.run.accum_world * e.seq_len) <= e.max_tokens // e.seq_len


def test_quant_table_variants_validate_on_the_run_config():
    argv = dry_run(QUANT, "runs/x")
    assert argv[3:6] == ["bench", "quant", "runs/x"]
    run_cfg = train_config()
    apply_sets(run_cfg, option_values(argv, "--set"))
    variants = option_values(argv, "--variant")
    names = [parse_quant_variant(v)[0] for v in variants]
    assert names[0] == "record" and len(names) == len(set(names))
    record = None
    for spec in variants:
        cfg = copy.deepcopy(run_cfg)
        name, sets = parse_quant_variant(spec)
        apply_sets(cfg, sets)
        finalize_config(cfg)  # raises on a field that does not exist or a combination it refuses
        if name == "record":
            record = cfg.quant
            q = cfg.quant  # the record's pipeline: GPTQ + SDClip, int7 GPTQ'd embed, LQER rank 4 top 3
            assert (q.matrix_method, q.clip_rule, q.embed_bits, q.gptq_embed, q.lqer_rank, q.lqer_top_k) == \
                ("gptq", "sdclip", 7, True, 4, 3)
        else:
            assert cfg.quant != record, f"{name} is the record's pipeline again"
