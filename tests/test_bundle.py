"""`pgolf bundle` joins package modules into one self-contained, deterministic script."""

import ast
import sys
import types

import pytest

from pgolf.bundle import (BUNDLE_MARK, BundleError, build_bundle, build_compressed_bundle, check_rules, export_bundle,
                          minify_source, module_graph, write_bundle)

SOURCES = {
    "pgolf.zz_core": '''"""Core constants.

Second docstring line.
"""

import os
from typing import Any

CORE_SCALE = 3  # why: three is the answer here


def core_twice(x: Any) -> Any:
    """Double it."""
    return 2 * x
''',
    "pgolf.zz_util": '''"""Utilities built on the core."""

import os
import math as m
from typing import Any, Callable

from pgolf.zz_core import CORE_SCALE, core_twice


def util_apply(x: float) -> float:
    # comment that minify drops
    return core_twice(x) * CORE_SCALE + m.floor(0.5)


def util_only_doc():
    """Nothing but a docstring."""


UTIL_TEXT = """keep

   these lines # not a comment
"""
''',
    "pgolf.zz_app": '''"""Entry module."""

import json

from pgolf.zz_core import core_twice
from pgolf.zz_util import UTIL_TEXT, util_apply


def app_main(preset: str) -> None:
    print(json.dumps({"preset": preset, "value": util_apply(1.0), "twice": core_twice(5),
                      "text": UTIL_TEXT}))
''',
}
ENTRY = ["pgolf.zz_app"]
PRESET = 'name = "tiny"\n[model]\nnum_layers = 2\n'
MAIN = "app_main(BUNDLED_PRESET)"
EXPECTED = {"preset": PRESET, "value": 6.0, "twice": 10, "text": "keep\n\n   these lines # not a comment\n"}


def _bundle(minify: bool = False, **kw) -> str:
    return build_bundle(ENTRY, PRESET, MAIN, minify, preset_name="tiny", sources=SOURCES, version="9.9", **kw)


def _run(text: str, name: str = "__main__") -> dict:
    scope = {"__name__": name}
    exec(compile(text, "train_gpt.py", "exec"), scope)
    return scope


def _printed(text: str, capsys) -> dict:
    import json
    capsys.readouterr()
    _run(text)
    return json.loads(capsys.readouterr().out)


def test_module_graph_puts_dependencies_first() -> None:
    assert module_graph(ENTRY, SOURCES) == ["pgolf.zz_core", "pgolf.zz_util", "pgolf.zz_app"]
    assert module_graph(["pgolf.zz_util"], SOURCES) == ["pgolf.zz_core", "pgolf.zz_util"]


def test_module_graph_breaks_ties_by_name() -> None:
    src = {"pgolf.zz_top": "from pgolf.zz_b import B1\nfrom pgolf.zz_a import A1\n",
           "pgolf.zz_a": "A1 = 1\n", "pgolf.zz_b": "B1 = 2\n"}
    assert module_graph(["pgolf.zz_top"], src) == ["pgolf.zz_a", "pgolf.zz_b", "pgolf.zz_top"]


def test_module_graph_reports_cycle() -> None:
    src = {"pgolf.zz_a": "from pgolf.zz_b import B1\n\nA1 = 1\n",
           "pgolf.zz_b": "from pgolf.zz_c import C1\n\nB1 = 2\n",
           "pgolf.zz_c": "from pgolf.zz_a import A1\n\nC1 = 3\n"}
    with pytest.raises(BundleError, match=r"import cycle: pgolf\.zz_a -> pgolf\.zz_b -> pgolf\.zz_c -> pgolf\.zz_a"):
        module_graph(["pgolf.zz_a"], src)


def test_module_graph_names_the_importer_of_a_missing_module() -> None:
    with pytest.raises(BundleError, match=r"pgolf\.zz_app imports pgolf\.zz_gone"):
        module_graph(["pgolf.zz_app"], {"pgolf.zz_app": "from pgolf.zz_gone import X\n"})


def test_bundle_layout(capsys) -> None:
    text = _bundle()
    lines = text.splitlines()
    assert BUNDLE_MARK in lines[0]
    assert lines[1] == "# pgolf 9.9 | entry: pgolf.zz_app | preset: tiny"
    banners = [ln for ln in lines if ln.startswith("# ---- ")]
    assert banners == ["# ---- pgolf/zz_core.py ----", "# ---- pgolf/zz_util.py ----", "# ---- pgolf/zz_app.py ----"]
    # Imports: merged, de-duplicated, stdlib only, all before the first module banner.
    top = [ast.unparse(n) for n in ast.parse(text).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert top == ["import json", "import math as m", "import os", "from typing import Any, Callable"]
    assert text.index("from typing import") < text.index("# ---- pgolf/zz_core.py")
    assert "from pgolf" not in text and "import pgolf" not in text
    # Module docstring kept as a comment; function docstrings and comments verbatim.
    assert "# Core constants.\n#\n# Second docstring line.\n" in text
    assert '    """Double it."""' in text and "# why: three is the answer here" in text
    assert text.endswith('\nif __name__ == "__main__":\n    app_main(BUNDLED_PRESET)\n')
    assert _printed(text, capsys) == EXPECTED


def test_bundle_is_deterministic() -> None:
    first = _bundle()
    reordered = dict(reversed(list(SOURCES.items())))
    again = build_bundle(ENTRY, PRESET, MAIN, preset_name="tiny", sources=reordered, version="9.9")
    assert first == again


def test_main_call_runs_only_as_script(capsys) -> None:
    scope = _run(_bundle(), name="imported_bundle")
    assert capsys.readouterr().out == ""
    assert scope["BUNDLED_PRESET"] == PRESET and scope["util_apply"](2.0) == 12.0


@pytest.mark.parametrize("preset", ['a = "x\\ty"\n', 'q = """multi\nline"""\n', 'e = "ends with quote"',
                                    "back\\\\slash\\\n", "plain"])
def test_preset_text_survives_exactly(preset: str) -> None:
    text = build_bundle(ENTRY, preset, MAIN, sources=SOURCES, version="9.9")
    assert _run(text, name="x")["BUNDLED_PRESET"] == preset


def test_minified_bundle_behaves_the_same(capsys) -> None:
    plain, small = _bundle(), _bundle(minify=True)
    assert len(small) < len(plain)
    assert "comment that minify drops" not in small and "Double it" not in small
    assert "# Core constants" not in small and "why: three" not in small and "-> Any" not in small
    assert BUNDLE_MARK in small.splitlines()[0]
    assert _printed(small, capsys) == EXPECTED
    assert small == _bundle(minify=True)


def test_minify_drops_preset_comments_but_keeps_values() -> None:
    import tomllib
    preset = '# about\n[model]\n\nnum_layers = 2  # kept: inline\nname = "# not a comment"\n'
    text = build_bundle(ENTRY, preset, MAIN, True, sources=SOURCES, version="9.9")
    got = _run(text, name="x")["BUNDLED_PRESET"]
    assert got == '[model]\nnum_layers = 2  # kept: inline\nname = "# not a comment"\n'
    assert tomllib.loads(got) == tomllib.loads(preset)


def test_minify_source_keeps_strings_and_fills_empty_bodies() -> None:
    src = ('def f(a: int) -> int:\n    """Only doc."""\n\n\nclass C:\n    """Doc."""\n    x: int = 1  # c\n\n'
           'S = """a\n\n#b\n"""\nT = "# not a comment"  # real comment\n')
    out = minify_source(src)
    assert out == "def f(a):\n pass\n\nclass C:\n x: int = 1\nS = 'a\\n\\n#b\\n'\nT = '# not a comment'\n"


def test_minify_source_reindents_blocks_and_continuations() -> None:
    src = ('def g(a,\n      b):\n    if a:\n        return (a +\n                b)\n    s = """x\n    y"""\n'
           '    return s\n')
    out = minify_source(src)
    assert out == "def g(a, b):\n if a:\n  return a + b\n s = 'x\\n    y'\n return s\n"
    scope: dict = {}
    exec(out, scope)
    assert scope["g"](0, 1) == "x\n    y" and scope["g"](2, 3) == 5


def test_compressed_bundle_runs_and_is_smaller(capsys) -> None:
    plain = _bundle()
    packed = build_compressed_bundle(plain, "train_gpt.py")
    assert BUNDLE_MARK in packed.splitlines()[0] and "train_gpt.py" in packed.splitlines()[0]
    assert _printed(packed, capsys) == EXPECTED
    # Size on the real package: a tiny bundle is mostly the self-extractor's header.
    # LZMA + base85 packs the readable bundle to about a third (0.32 at commit 9bc7c78).
    _real_entry_or_skip()
    real = build_bundle(["pgolf.run"], "x = 1\n", "bundle_main(BUNDLED_PRESET, __file__)", preset_name="test")
    assert len(build_compressed_bundle(real).encode()) < 0.45 * len(real.encode())


def test_build_bundle_refuses_rule_breakers() -> None:
    bad = dict(SOURCES)
    bad["pgolf.zz_app"] = SOURCES["pgolf.zz_app"] + "\nprint('side effect')\n"
    with pytest.raises(BundleError, match=r"pgolf/zz_app.py:\d+: top-level `Expr`"):
        build_bundle(ENTRY, PRESET, MAIN, sources=bad)


def test_build_bundle_refuses_uncompilable_main_call() -> None:
    with pytest.raises(BundleError, match="does not compile"):
        build_bundle(ENTRY, PRESET, "app_main(", sources=SOURCES)


def test_write_bundle_replaces_only_generated_files(tmp_path) -> None:
    out = tmp_path / "rec" / "train_gpt.py"
    write_bundle(out, _bundle())
    assert out.read_text() == _bundle()
    write_bundle(out, _bundle(minify=True))
    assert out.read_text() == _bundle(minify=True)
    foreign = tmp_path / "train_gpt.py"
    foreign.write_text("print('hand written')\n")
    with pytest.raises(BundleError, match="not generated by pgolf bundle"):
        write_bundle(foreign, _bundle())
    assert foreign.read_text() == "print('hand written')\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["rec", "train_gpt.py", "train_gpt.py"]


def test_export_bundle_writes_readable_and_compressed(tmp_path, capsys) -> None:
    preset = tmp_path / "tiny.toml"
    preset.write_text(PRESET)
    sizes = export_bundle(tmp_path / "out" / "train_gpt.py", str(preset), tuple(ENTRY), MAIN,
                          compressed=True, sources=SOURCES)
    readable = (tmp_path / "out" / "train_gpt.py").read_text()
    packed = (tmp_path / "out" / "train_gpt_compressed.py").read_text()
    assert sizes["bytes"] == len(readable.encode()) and sizes["compressed_bytes"] == len(packed.encode())
    assert "| preset: tiny" in readable.splitlines()[1]
    assert _printed(readable, capsys) == EXPECTED == _printed(packed, capsys)


def test_bundle_preset_text_holds_exactly_the_non_default_fields() -> None:
    from pgolf.bundle import bundle_preset_text
    from pgolf.config import config_from_toml, config_to_dict, finalize_config, resolve_config
    from pgolf.config_tree import Config
    assert bundle_preset_text(Config()) == ""
    cfg, _ = resolve_config(preset="record_1128", env={}, sets=["model.num_layers=12", "data.path=/x\\y"])
    finalize_config(cfg)
    text = bundle_preset_text(cfg)
    assert "[model]\n" in text and "num_layers = 12\n" in text and "\nvocab_size" not in text
    assert config_to_dict(config_from_toml(text)) == config_to_dict(cfg)


def _real_entry_or_skip() -> None:
    from pgolf.bundle import ModuleSources
    tree = ModuleSources().get("pgolf.run")[1]
    assert any(isinstance(n, ast.FunctionDef) and n.name == "bundle_main" for n in tree.body), \
        "pgolf.run must define bundle_main: the bundle's entry point"
    modules = module_graph(["pgolf.run"])
    bad = check_rules(modules)
    if bad:
        pytest.fail("package breaks the bundle rules:\n" + "\n".join(bad))


@pytest.mark.slow
@pytest.mark.parametrize("minify", [False, True])
def test_real_bundle_compiles_and_defines_everything(minify: bool) -> None:
    _real_entry_or_skip()
    text = build_bundle(["pgolf.run"], 'x = 1\n', "bundle_main(BUNDLED_PRESET, __file__)", minify,
                        preset_name="test")
    tree = ast.parse(text)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("pgolf")]
    # Running the definitions (not main) proves every module-level name resolves in bundle order.
    mod = types.ModuleType("pgolf_bundle_under_test")
    sys.modules[mod.__name__] = mod
    try:
        exec(compile(text, "train_gpt.py", "exec"), mod.__dict__)
    finally:
        del sys.modules[mod.__name__]
    assert callable(mod.__dict__["bundle_main"]) and mod.__dict__["BUNDLED_PRESET"] == "x = 1\n"


def _without_docstrings(tree: ast.AST) -> str:
    """The tree as the minifier should leave it: no docstrings, function annotations or field docs."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body and \
                isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
                isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_f":
            node.args[1] = ast.Constant("")  # config field docs
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
            for arg in ast.walk(node.args):
                if isinstance(arg, ast.arg):
                    arg.annotation = None
    return ast.dump(tree)


def test_minify_preserves_the_syntax_tree_of_every_package_module() -> None:
    from pgolf.bundle import ModuleSources, bundle_package_modules
    mods = ModuleSources()
    for name in bundle_package_modules():
        src = mods.source(name)
        assert _without_docstrings(ast.parse(minify_source(src))) == _without_docstrings(ast.parse(src)), name


TWINS = {
    "pgolf.zz_one": "def _check(x):\n    return x + 1\n\n\ndef one_value(x):\n    return _check(x)\n",
    "pgolf.zz_two": "def _check(x):\n    return x * 10\n\n\ndef two_value(x):\n    return _check(x) + len(f'{x}')\n",
    "pgolf.zz_both": ("from pgolf.zz_one import one_value\nfrom pgolf.zz_two import two_value\n\n\n"
                      "def both_main(p):\n    print(one_value(1), two_value(2))\n"),
}


@pytest.mark.parametrize("minify", [False, True])
def test_same_private_name_in_two_modules_is_renamed_apart(capsys, minify: bool) -> None:
    assert check_rules(sorted(TWINS), TWINS) == []
    text = build_bundle(["pgolf.zz_both"], "", "both_main(BUNDLED_PRESET)", minify, sources=TWINS)
    capsys.readouterr()
    _run(text)
    assert capsys.readouterr().out == "2 21\n"
    assert "_check_zz_one" in text and "_check_zz_two" in text


def test_public_duplicates_are_still_refused() -> None:
    dup = {"pgolf.zz_one": "def check(x):\n    return x\n", "pgolf.zz_two": "def check(x):\n    return x\n"}
    assert any("duplicate public top-level name `check`" in v for v in check_rules(sorted(dup), dup))


def test_private_name_inside_an_f_string_is_refused_not_miscompiled() -> None:
    bad = dict(TWINS, **{"pgolf.zz_two": "def _check(x):\n    return x\n\n\ndef two_value(x):\n"
                                          "    return f'{_check(x)}'\n"})
    with pytest.raises(BundleError, match="cannot rename private `_check`"):
        build_bundle(["pgolf.zz_both"], "", "both_main(BUNDLED_PRESET)", sources=bad)


def test_unreached_definitions_are_left_out(capsys) -> None:
    src = dict(SOURCES, **{"pgolf.zz_util": SOURCES["pgolf.zz_util"] + "\n\n# about the unused one\ndef util_unused():\n"
                                                                        "    return 1\n"})
    shaken = build_bundle(ENTRY, PRESET, MAIN, sources=src, version="9.9")
    full = build_bundle(ENTRY, PRESET, MAIN, sources=src, version="9.9", shake=False)
    assert "util_unused" in full and "util_unused" not in shaken and "about the unused one" not in shaken
    assert "util_only_doc" not in shaken  # defined but never called either
    assert _printed(shaken, capsys) == EXPECTED


# What a record_1128 run executes, in bundle order. A new module here costs code bytes that
# the model cannot use: check that the run really needs it before updating the list.
RECORD_1128_MODULES = [
    "pgolf.config_checks", "pgolf.config_tree", "pgolf.errors", "pgolf.config", "pgolf.data.caseops",
    "pgolf.data.tokenizer", "pgolf.interrupts", "pgolf.atomic", "pgolf.data.shards", "pgolf.data.sidecar",
    "pgolf.hw", "pgolf.data.loader", "pgolf.data.paths", "pgolf.dist", "pgolf.eval.forward",
    "pgolf.model.attention", "pgolf.model.banks", "pgolf.model.embeddings", "pgolf.model.mlp", "pgolf.model.stack",
    "pgolf.model.gpt", "pgolf.model.build", "pgolf.optim.errors", "pgolf.optim.averaging", "pgolf.optim.muon",
    "pgolf.optim.builder", "pgolf.optim.schedule", "pgolf.parts", "pgolf.progress", "pgolf.eval.bpb",
    "pgolf.eval.sliding", "pgolf.eval.slot", "pgolf.eval.ttt", "pgolf.eval.runner", "pgolf.quant.codec",
    "pgolf.quant.quantizers", "pgolf.quant.clip", "pgolf.quant.fake_quant", "pgolf.quant.lqer",
    "pgolf.quant.policy", "pgolf.quant.artifact", "pgolf.runlog", "pgolf.quant.export", "pgolf.eval.final",
    "pgolf.runfolder", "pgolf.checkpoint", "pgolf.wallclock", "pgolf.train", "pgolf.run",
]


def test_record_closure_is_pinned() -> None:
    from pgolf.bundle import BUNDLE_ENTRY, bundle_modules
    from pgolf.bundle.build import left_out_names
    from pgolf.config import resolve_config
    from pgolf.parts import parts_needed
    cfg, _ = resolve_config(preset="record_1128", env={})
    got = bundle_modules(list(BUNDLE_ENTRY), leave_out=left_out_names(parts_needed(cfg)))
    never = {"pgolf.bench", "pgolf.bench_eval", "pgolf.record", "pgolf.data.corpus", "pgolf.data.fineweb",
             "pgolf.eval.legality", "pgolf.cli", "pgolf.plot", "pgolf.compare", "pgolf.eval.lora_ttt",
             "pgolf.eval.phased_ttt", "pgolf.eval.slot_state", "pgolf.quant.gptq", "pgolf.quant.calibration",
             "pgolf.data.coprime", "pgolf.eval.batched_lora"}
    assert not never & set(got), never & set(got)
    assert got == RECORD_1128_MODULES


@pytest.mark.slow
def test_counted_file_is_the_self_extracting_form_of_the_readable_one(capsys) -> None:
    from pgolf.bundle import READABLE_NAME, shipped_files
    from pgolf.config import finalize_config, resolve_config
    cfg, _ = resolve_config(preset="record_1128", env={})
    finalize_config(cfg)
    files = shipped_files(cfg)
    assert cfg.quant.code_form == "compressed" and set(files) == {"train_gpt.py", READABLE_NAME}
    counted, readable = files["train_gpt.py"], files[READABLE_NAME]
    assert len(counted) < len(readable) / 3 and BUNDLE_MARK in counted.splitlines()[0]
    scope = _run(counted, name="not_main")  # defines everything, runs nothing
    assert callable(scope["bundle_main"]) and scope["BUNDLED_PRESET"] == _run(readable, "x")["BUNDLED_PRESET"]
    assert shipped_files(cfg, "plain") == {"train_gpt.py": readable}


def test_log_starts_with_the_shipped_code(tmp_path) -> None:
    from pgolf.config_tree import Config
    from pgolf.run import _log_setup
    from pgolf.runfolder import RunFolder
    from pgolf.runlog import RunLog

    class FakeComm:
        is_main = True

    files = {"train_gpt.py": "# packed\nprint(1)\n", "train_gpt_readable.py": "# readable\nx = 1\n"}
    spec = types.SimpleNamespace(cfg=Config(), code_files=files, comm=FakeComm(), checkpoint=None,
                                 out_dir=str(tmp_path), warnings=[], folder=RunFolder(tmp_path, False, True))
    log = RunLog(str(tmp_path / "log.txt"), echo=False)
    _log_setup(spec, log)
    log.close()
    import hashlib
    lines = (tmp_path / "log.txt").read_text().splitlines()
    sha = hashlib.sha256(files["train_gpt.py"].encode()).hexdigest()
    assert lines[0] == f"event:code sha256:{sha} bytes:{len(files['train_gpt.py'])} form:compressed"
    assert lines[1:4] == ["=== shipped train_gpt.py ===", "# readable", "x = 1"]
    assert lines[4] == "=== shipped train_gpt.py ===" and lines[5].startswith("event:config")


PARTED = {
    "pgolf.zz_lib": '''def gptq_quantize(x):
    return lib_only_for_gptq(x)


def lib_only_for_gptq(x):
    return x + 1
''',
    "pgolf.zz_main": '''import json

from pgolf.parts import unshipped
from pgolf.zz_lib import gptq_quantize


def part_main(flag):
    print(json.dumps(gptq_quantize(1) if flag else "plain"))
''',
}


def test_a_left_out_part_is_a_stub_and_what_only_it_uses_is_gone(capsys) -> None:
    lean = build_bundle(["pgolf.zz_main"], "", "part_main(False)", sources=PARTED, shipped_parts=set())
    assert "def lib_only_for_gptq" not in lean and "gptq_quantize = unshipped('gptq')" in lean
    assert "SHIPPED_PARTS = ()" in lean
    assert _printed(lean, capsys) == "plain"
    scope = _run(lean, name="not_main")
    with pytest.raises(scope["UnshippedPartError"], match="without gptq"):  # the bundle's own class
        scope["part_main"](True)
    full = build_bundle(["pgolf.zz_main"], "", "part_main(True)", sources=PARTED, shipped_parts={"gptq"})
    assert "def lib_only_for_gptq" in full and "unshipped('gptq')" not in full
    assert _printed(full, capsys) == 2


def test_a_left_out_name_used_at_import_time_is_refused() -> None:
    bad = dict(PARTED)
    bad["pgolf.zz_main"] += "\n\nPART_TABLE = {'q': gptq_quantize}\n\n\ndef table_main():\n    return PART_TABLE\n"
    with pytest.raises(BundleError, match="zz_main.py uses left-out `gptq_quantize` at import time"):
        build_bundle(["pgolf.zz_main"], "", "table_main()", sources=bad, shipped_parts=set())
    build_bundle(["pgolf.zz_main"], "", "table_main()", sources=bad, shipped_parts={"gptq"})


def test_stubs_need_the_unshipped_helper() -> None:
    alone = {"pgolf.zz_lib": PARTED["pgolf.zz_lib"],
             "pgolf.zz_main": PARTED["pgolf.zz_main"].replace("from pgolf.parts import unshipped\n", "")}
    with pytest.raises(BundleError, match="need pgolf.parts.unshipped"):
        build_bundle(["pgolf.zz_main"], "", "part_main(False)", sources=alone, shipped_parts=set())
