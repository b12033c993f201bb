"""A lean record train_gpt.py (quant.code_lean: config frozen, code specialized to it, counted
as #1855 ships its own: python-minifier, brotli 11, base85) trains the weights of the full one."""

import ast
import os
import subprocess
import sys

import pytest
import torch

from pgolf.bundle import READABLE_NAME, bundle_for_config, shipped_files
from pgolf.bundle.join import unused_methods
from pgolf.bundle.rules import BUNDLE_MARK
from pgolf.bundle.specialize import external_attrs_resolver
from pgolf.config import ConfigError, resolve_config, shippable_config
from pgolf.lean import frozen_env

TINY = ["model.num_layers=2", "model.model_dim=32", "model.num_heads=2", "model.num_kv_heads=1",
        "model.compile=false", "model.xsa_last_n=2", "run.iterations=4", "run.train_batch_tokens=512",
        "run.train_seq_len=64", "run.accum_world=1", "run.max_wallclock_seconds=0", "run.train_log_every=2",
        "schedule.warmup_steps=2", "eval.seq_len=64", "eval.stride=32", "eval.max_tokens=512",
        "eval.batch_tokens=512", "eval.ttt_chunk_tokens=128", "eval.ttt_batch_seqs=2",
        "eval.ttt_phased_prefix_docs=1", "quant.calib_seqs=2", "quant.calib_seq_len=64", "quant.calib_batch_seqs=2",
        "quant.gptq_reserve_seconds=0", "quant.small_numel=0", "quant.compressor_fallback=brotli",
        # what a 32-wide model on the 1024-token corpus cannot have
        "model.vocab_size=1024", "model.loop_start=0", "model.loop_end=0", "model.parallel_start=0",
        "model.doc_max_len=32"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGOLF_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.pop("PYTHONPATH", None)
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _run(path, text: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`text` run as train_gpt.py in `path`, pgolf blocked from import (the file must be whole)."""
    path.mkdir(exist_ok=True)
    (path / "train_gpt.py").write_text(text)
    runner = "import runpy, sys; sys.modules['pgolf'] = None; runpy.run_path('train_gpt.py', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", runner], cwd=path, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_lean_counted_file_trains_the_weights_of_the_full_bundle(tmp_path, embedded_corpus):
    cfg, _ = resolve_config("record_1855", None, {}, TINY)
    assert cfg.quant.code_lean and cfg.quant.code_codec == "brotli" and cfg.quant.code_form == "compressed"
    files = shipped_files(cfg)
    counted, readable = files["train_gpt.py"], files[READABLE_NAME]
    lines = counted.splitlines()
    assert BUNDLE_MARK in lines[0] and len(lines) == 3 and lines[1].startswith("import brotli as B,base64 as A")
    assert "lean_main(Config(" in readable and "BUNDLED_PRESET" not in readable
    full_cfg, _ = resolve_config("record_1855", None, {}, [*TINY, "quant.code_lean=false"])
    full = bundle_for_config(shippable_config(full_cfg), "run")
    assert "bundle_main(BUNDLED_PRESET" in full and len(readable) < len(full)
    env = _clean_env(DATA_PATH=embedded_corpus["data_path"], TOKENIZER_PATH=embedded_corpus["tokenizer_path"],
                     RUN_ID="r")
    results = {}
    for name, text in (("lean", counted), ("full", full)):
        res = _run(tmp_path / name, text, env)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        results[name] = (torch.load(tmp_path / name / "runs" / "r" / "final_state.pt", map_location="cpu"),
                         res.stdout.strip().splitlines()[-1])
    (lean_w, lean_line), (full_w, full_line) = results["lean"], results["full"]
    assert sorted(lean_w) == sorted(full_w)
    for key in full_w:
        assert torch.equal(lean_w[key], full_w[key]), key
    # Same quantized artifact and score: the summary lines differ only in the artifact's code bytes.
    assert lean_line.split()[:2] == full_line.split()[:2], (lean_line, full_line)


@pytest.fixture(scope="module")
def lean_record_file():
    cfg, _ = resolve_config("record_1855", env={})
    return shipped_files(cfg)["train_gpt.py"]


@pytest.mark.slow
@pytest.mark.parametrize("env, named", [
    ({"ITERATIONS": "5"}, "ITERATIONS=5"),
    ({"SLOT_ENABLED": "1"}, "SLOT_ENABLED=1"),  # asks for a part the file left out
    ({"PGOLF_OPTIM_MATRIX_LR": "0.01", "TTT_ENABLED": "0"}, "PGOLF_OPTIM_MATRIX_LR=0.01, TTT_ENABLED=0"),
])
def test_lean_file_refuses_an_environment_that_changes_its_config_in_one_line(lean_record_file, tmp_path, env,
                                                                            named):
    res = _run(tmp_path, lean_record_file, _clean_env(**env, DATA_PATH=str(tmp_path / "nowhere"), SEED="7"))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_gpt.py: error: this train_gpt.py runs the config it was "
                                                   f"generated for (quant.code_lean) and the environment changes it "
                                                   f"({named})"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_gpt.py"]  # no run folder, no log


@pytest.mark.slow
def test_lean_file_takes_paths_seed_and_its_own_values_from_the_environment(lean_record_file, tmp_path):
    """DATA_PATH, SEED and values equal to the frozen ones pass: the run gets as far as the (absent) data."""
    env = _clean_env(DATA_PATH=str(tmp_path / "nowhere"), SEED="7", RUN_ID="r", VOCAB_SIZE="8192",
                     TTT_ENABLED="1", ENABLE_LOOPING_AT="0.35")
    res = _run(tmp_path, lean_record_file, env)
    assert res.returncode == 2 and "environment changes" not in res.stderr and "nowhere" in res.stderr, \
        res.stderr[-2000:]


def test_frozen_env_sets_the_runtime_fields_and_refuses_the_rest():
    cfg, _ = resolve_config("record_1855", env={})
    frozen_env(cfg, {"SEED": "9", "DATA_PATH": "/d", "TOKENIZER_PATH": "/t.model", "RUN_ID": "x", "HOME": "/h",
                     "NUM_LAYERS": "11", "TIE_EMBEDDINGS": "true", "MATRIX_LR": "0.026", "PGOLF_TRACEBACK": "1"})
    assert (cfg.run.seed, cfg.data.path, cfg.data.tokenizer_path, cfg.run.run_id) == (9, "/d", "/t.model", "x")
    for env in ({"NUM_LAYERS": "12"}, {"TIE_EMBEDDINGS": "0"}, {"MATRIX_LR": "abc"}, {"MIN_LR": "0.1"},
                {"PGOLF_RUN_ITERATIONS": "3"}):
        with pytest.raises(ConfigError, match="the environment changes it"):
            frozen_env(cfg, env)
    with pytest.raises(ConfigError, match="SEED='x' is not an integer"):
        frozen_env(cfg, {"SEED": "x"})
    frozen_env(cfg, {"PGOLF_RUN_DEVICE": "cpu"})  # where it runs, as an exported README says
    assert cfg.run.device == "cpu"
    with pytest.raises(ConfigError, match="PGOLF_RUN_DEVICE='tpu': use one of auto, cpu, cuda"):
        frozen_env(cfg, {"PGOLF_RUN_DEVICE": "tpu"})


def test_lean_record_file_leaves_out_what_its_config_never_runs():
    cfg, _ = resolve_config("record_1855", env={})
    lean = bundle_for_config(shippable_config(cfg), "run")
    for gone in ("def config_problems(", "class SlotScorer", "def eval_ttt(", "def eval_sliding(",
                 "def stop_on_signals(", "def apply_env(", "def load_checkpoint(", "def parse(cls",
                 "def save_checkpoint(", "class AutoCheckpoints", "def checkpoint_due(", "checkpoint_due(r."):
        assert gone not in lean, gone
    for kept in ("def eval_record_ttt(", "def gptq_quantize(", "def compress_pergroup(", "class GPT("):
        assert kept in lean, kept


def _dead(src: str) -> list[str]:
    tree = ast.parse(src)
    keep = {"m": set(range(len(tree.body)))}
    return sorted(f.name for f in unused_methods({"m": tree}, keep, external_attrs_resolver([tree]))["m"])


def test_unused_methods_are_the_ones_no_kept_code_can_reach():
    src = '''
import torch


class Net(torch.nn.Module):
    def forward(self, x):        # torch calls it
        return x

    def helper(self):            # called below
        return 1

    def by_name(self):           # looked up by a string
        return 2

    def unused(self):
        return self.unused()     # only itself


class Plain:
    def __init__(self):
        self.v = 0

    def used_prop(self):
        return 3

    def dead(self):
        return 4


def main(n):
    getattr(n, "by_name")
    return n.helper() + Plain().used_prop()
'''
    assert _dead(src) == ["dead", "unused"]


def test_a_class_whose_base_does_not_resolve_keeps_every_method():
    src = "from not_a_package_anywhere import Base\n\n\nclass C(Base):\n    def hook(self):\n        return 1\n"
    assert _dead(src) == []


@pytest.mark.slow
@pytest.mark.triton
def test_counted_file_runs_the_triton_kernels_it_unpacks(tmp_path, embedded_corpus):
    """@triton.jit reads kernel source through linecache: the counted file registers its unpacked
    text there, so the kernels run from it as from the readable file (Triton's CPU interpreter)."""
    pytest.importorskip("triton")
    cfg, _ = resolve_config("record_1855", None, {}, [*TINY, "model.fused_ce=on", "model.fused_mlp=on",
                                                      "run.iterations=2", "eval.max_tokens=256"])
    files = shipped_files(cfg)
    assert "linecache" in files["train_gpt.py"].splitlines()[1]
    env = _clean_env(DATA_PATH=embedded_corpus["data_path"], TOKENIZER_PATH=embedded_corpus["tokenizer_path"],
                     RUN_ID="r", TRITON_INTERPRET="1")
    weights = {}
    for name in ("train_gpt.py", READABLE_NAME):
        res = _run(tmp_path / name.replace(".", "_"), files[name], env)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        weights[name] = torch.load(tmp_path / name.replace(".", "_") / "runs" / "r" / "final_state.pt")
    for key, want in weights[READABLE_NAME].items():
        assert torch.equal(weights["train_gpt.py"][key], want), key


def test_the_lean_file_config_is_the_frozen_config():
    """Its Config() is the config it was built for: the same TOML, field for field."""
    from pgolf.config import config_to_toml
    cfg, _ = resolve_config("record_1855", None, {}, ["run.iterations=7", "eval.ttt_lora_rank=12"])
    cfg = shippable_config(cfg)
    scope: dict = {"__name__": "not_main"}
    exec(compile(bundle_for_config(cfg, "run"), "train_gpt.py", "exec"), scope)
    assert scope["config_to_toml"](scope["Config"]()) == config_to_toml(cfg)
