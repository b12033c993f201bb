"""Optional parts (pgolf.parts): what a config says it needs is exactly what its run calls, and
a bundle generated without a part refuses a config that needs it, before any work."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf.config import resolve_config
from pgolf.parts import OPTIONAL_PARTS, UnshippedPartError, check_parts_shipped, parts_needed, unshipped

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import tiny  # noqa: E402


def _part_of_code() -> dict:
    """id of a code object -> part, for every function (or method of a class) a part names."""
    import pgolf.run  # noqa: F401  (loads every module a run can reach)
    found = {}
    for part, (_, names) in OPTIONAL_PARTS.items():
        for name in names:
            owners = [m for k, m in sys.modules.items() if k.startswith("pgolf.") and name in vars(m)]
            assert owners, f"{part}: no module defines {name}"
            obj = inspect.unwrap(vars(owners[0])[name])  # the function under @torch.no_grad()
            funcs = [obj] if hasattr(obj, "__code__") else \
                [inspect.unwrap(f) for f in vars(obj).values() if hasattr(inspect.unwrap(f), "__code__")]
            assert funcs, f"{part}: {name} has no code to trace"
            found.update({id(f.__code__): part for f in funcs})
    return found


def _parts_called(cfg, out_dir) -> set[str]:
    from pgolf.run import train
    codes, called = _part_of_code(), set()

    def hook(frame, event, arg):
        # By identity: equal code objects (same bytecode and names) are not the same function.
        part = codes.get(id(frame.f_code)) if event == "call" else None
        if part is not None:
            called.add(part)

    sys.setprofile(hook)
    try:
        train(cfg, str(out_dir))
    finally:
        sys.setprofile(None)
    return called


RUNS = {
    "plain": [],
    "record+gptq+lqer+causal-slot": ["model.arch=record", "quant.matrix_method=gptq", "quant.calib_seqs=2",
                                     "quant.calib_seq_len=64", "quant.lqer_rank=2", "quant.lqer_top_k=1",
                                     "quant.small_numel=0", "eval.slot_mode=causal", "eval.slot_carry=true",
                                     "eval.stride=32", "eval.seq_len=64"],
    "lora-ttt": ["eval.ttt_enabled=true", "eval.ttt_kind=lora", "eval.seq_len=64", "eval.ttt_chunk_tokens=128"],
    "phased-ttt": ["eval.ttt_enabled=true", "eval.ttt_kind=phased", "eval.seq_len=64", "eval.ttt_chunk_tokens=128"],
    "coprime": ["data.sampling=coprime"],
    "record-ttt": ["eval.ttt_enabled=true", "eval.ttt_kind=phased", "eval.ttt_lora_method=record", "eval.seq_len=64",
                   "eval.ttt_chunk_tokens=128", "eval.ttt_lora_batch=4"],
    # brotli fallback: the part runs the same with or without the lrzip program.
    # On a CPU: the ops' eager reference (or Triton's interpreter under TRITON_INTERPRET=1).
    "fused-kernels": ["model.fused_ce=on", "model.fused_mlp=on"],
    "stream+pergroup": ["data.packing=stream", "model.doc_mask=true", "model.doc_max_len=32",
                        "quant.compressor=pergroup", "quant.compressor_fallback=brotli"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_calls_exactly_the_parts_its_config_needs(embedded_corpus, tmp_path, name):
    cfg = tiny(embedded_corpus, *RUNS[name])
    need = parts_needed(cfg)
    assert _parts_called(cfg, tmp_path / "run") == need
    assert name == "plain" or need, "each run but the plain one exercises a part"


def test_every_part_is_exercised_by_a_traced_run(embedded_corpus):
    covered = set().union(*(parts_needed(tiny(embedded_corpus, *sets)) for sets in RUNS.values()))
    # resume: no config needs it, only the package resumes (a generated train_gpt.py never does;
    # tests/test_e2e.py resumes package runs).
    assert covered == set(OPTIONAL_PARTS) - {"resume"}


def test_a_config_needing_a_left_out_part_is_refused_in_one_line():
    cfg, _ = resolve_config(preset="record_1128", env={}, sets=["quant.lqer_rank=4"])
    check_parts_shipped(cfg, tuple(parts_needed(cfg)))
    with pytest.raises(UnshippedPartError, match=r"^this train_gpt.py was generated without lqer, which"):
        check_parts_shipped(cfg, tuple(parts_needed(cfg) - {"lqer"}))
    with pytest.raises(UnshippedPartError, match="without gptq; regenerate it"):
        unshipped("gptq")(1, key=2)


def test_record_bundle_ships_no_left_out_definition():
    from pgolf.bundle import bundle_for_config
    cfg, _ = resolve_config(preset="record_1128", env={})
    need = parts_needed(cfg)
    text = bundle_for_config(cfg, "record_1128")
    for part, (_, names) in OPTIONAL_PARTS.items():
        for name in names:
            if part in need:
                assert f"def {name}(" in text or f"class {name}" in text, name
                continue
            assert f"def {name}(" not in text and f"class {name}" not in text, name
            assert f"{name} = unshipped({part!r})" in text or name not in text, name
    assert f"SHIPPED_PARTS = {tuple(sorted(need))!r}" in text
    full_cfg, _ = resolve_config(preset="record_1128", env={}, sets=["quant.matrix_method=gptq"])
    full = bundle_for_config(full_cfg, "record_1128")
    assert "def gptq_quantize(" in full and f"SHIPPED_PARTS = {tuple(sorted(need | {'gptq'}))!r}" in full


def test_bundle_refuses_an_env_var_that_needs_a_left_out_part_before_any_work(tmp_path, embedded_corpus):
    from pgolf.bundle import bundle_for_config
    cfg, _ = resolve_config(preset="smoke", env={})
    (tmp_path / "train_gpt.py").write_text(bundle_for_config(cfg, "smoke"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGOLF_")}
    env.update(PGOLF_QUANT_LQER_RANK="4", DATA_PATH=embedded_corpus["data_path"],
               TOKENIZER_PATH=embedded_corpus["tokenizer_path"])
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, "train_gpt.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0
    assert "generated without lqer" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_gpt.py"]  # no run folder, no log


@pytest.mark.parametrize("preset, parts", [
    ("smoke", {"signals", "checkpoints"}), ("record_1128", {"signals", "checkpoints"}),
    ("record_1128_fixed", {"causal_slot", "signals", "checkpoints"}),
    ("record_1128_gptq", {"gptq", "lqer", "signals", "checkpoints"}),
    # A lean bundle (quant.code_lean) ships without signal handling; #1855 wrote no checkpoints.
    ("record_1855", {"gptq", "lqer", "record_ttt", "pergroup", "stream_packing", "fused_kernels"}),
])
def test_each_preset_ships_the_parts_its_record_used(preset, parts):
    cfg, _ = resolve_config(preset=preset, env={})
    assert parts_needed(cfg) == parts
