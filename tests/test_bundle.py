"""`pgolf bundle` joins package modules into one self-contained, deterministic script."""

import ast
import sys
import types

import pytest

from pgolf.bundle import (BUNDLE_MARK, BundleError, build_bundle, build_compressed_bundle, check_rules,
                          export_bundle, minify_source, module_graph, write_bundle)

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
    assert "# Core constants" not in small and "why: three" not in small
    assert "# ---- pgolf/zz_util.py ----" in small and BUNDLE_MARK in small.splitlines()[0]
    assert _printed(small, capsys) == dict(EXPECTED, preset='name = "tiny"\n[model]\nnum_layers = 2\n')
    assert small == _bundle(minify=True)


def test_minify_drops_preset_comments_but_keeps_values() -> None:
    import tomllib
    preset = '# about\n[model]\n\nnum_layers = 2  # kept: inline\nname = "# not a comment"\n'
    text = build_bundle(ENTRY, preset, MAIN, True, sources=SOURCES, version="9.9")
    got = _run(text, name="x")["BUNDLED_PRESET"]
    assert got == '[model]\nnum_layers = 2  # kept: inline\nname = "# not a comment"\n'
    assert tomllib.loads(got) == tomllib.loads(preset)


def test_minify_source_keeps_strings_and_fills_empty_bodies() -> None:
    src = ('def f():\n    """Only doc."""\n\n\nclass C:\n    """Doc."""\n    x = 1  # c\n\n'
           'S = """a\n\n#b\n"""\nT = "# not a comment"  # real comment\n')
    out = minify_source(src)
    assert out == 'def f():\n pass\nclass C:\n x = 1\nS = """a\n\n#b\n"""\nT = "# not a comment"\n'


def test_minify_source_reindents_blocks_and_continuations() -> None:
    src = ('def g(a,\n      b):\n    if a:\n        return (a +\n                b)\n    s = """x\n    y"""\n'
           '    return s\n')
    out = minify_source(src)
    assert out == 'def g(a,\nb):\n if a:\n  return (a +\nb)\n s = """x\n    y"""\n return s\n'
    scope: dict = {}
    exec(out, scope)
    assert scope["g"](0, 1) == "x\n    y" and scope["g"](2, 3) == 5


def test_compressed_bundle_runs_and_is_smaller(capsys) -> None:
    plain = _bundle() * 1  # the real package is far larger; the ratio only matters there
    packed = build_compressed_bundle(plain, "train_gpt.py")
    assert BUNDLE_MARK in packed.splitlines()[0] and "train_gpt.py" in packed.splitlines()[0]
    assert _printed(packed, capsys) == EXPECTED


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
    sizes = export_bundle(tmp_path / "out" / "train_gpt.py", str(preset), tuple(ENTRY), MAIN, minify=True,
                          compressed=True, sources=SOURCES)
    readable = (tmp_path / "out" / "train_gpt.py").read_text()
    packed = (tmp_path / "out" / "train_gpt_compressed.py").read_text()
    assert sizes["bytes"] == len(readable.encode()) and sizes["compressed_bytes"] == len(packed.encode())
    assert "| preset: tiny" in readable.splitlines()[1]
    assert _printed(readable, capsys) == EXPECTED == _printed(packed, capsys)


def test_bundle_preset_text_holds_exactly_the_non_default_fields() -> None:
    from pgolf.bundle import bundle_preset_text
    from pgolf.config import Config, config_from_toml, config_to_dict, finalize_config, resolve_config
    assert bundle_preset_text(Config()) == ""
    cfg, _ = resolve_config(preset="record_1128", env={}, sets=["model.num_layers=12", "data.path=/x\\y"])
    finalize_config(cfg)
    text = bundle_preset_text(cfg)
    assert "[model]\n" in text and "num_layers = 12\n" in text and "\nvocab_size" not in text
    assert config_to_dict(config_from_toml(text)) == config_to_dict(cfg)


def _real_entry_or_skip() -> None:
    from pgolf.bundle import _BundleModules
    tree = _BundleModules().get("pgolf.run")[1]
    assert any(isinstance(n, ast.FunctionDef) and n.name == "bundle_main" for n in tree.body), \
        "pgolf.run must define bundle_main: the bundle's entry point"
    modules = module_graph(["pgolf.run"])
    bad = check_rules(modules)
    if bad:
        pytest.fail("package breaks the bundle rules:\n" + "\n".join(bad))


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
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body and \
                isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
                isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def test_minify_keeps_string_ends_of_multiline_openers() -> None:
    src = 'S = """trailing   \nx"""  # c\n'
    assert minify_source(src) == 'S = """trailing   \nx"""\n'


def test_minify_preserves_the_syntax_tree_of_every_package_module() -> None:
    from pgolf.bundle import _BundleModules, bundle_package_modules
    mods = _BundleModules()
    for name in bundle_package_modules():
        src = mods.source(name)
        assert _without_docstrings(ast.parse(minify_source(src))) == _without_docstrings(ast.parse(src)), name
