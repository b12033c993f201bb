"""`pgolf bundle`: join the modules a run needs into one self-contained train_gpt.py.

The readable bundle keeps comments and names each source module in a banner; the counted
file is by default its self-extracting form (minified, LZMA + base85), shipped beside it.
"""

import ast
import dataclasses
import importlib.metadata
import io
import os
import sys
import tomllib
from pathlib import Path

from pgolf.atomic import atomic_write
from pgolf.bundle.edits import string_lines
from pgolf.bundle.graph import ordered_modules
from pgolf.bundle.join import defined_names, dropped_lines, names_used_at_import, reachable, rename_names, rename_plan
from pgolf.bundle.pack import build_compressed_bundle, minify_source
from pgolf.bundle.rules import (BUNDLE_MARK, STDLIB, BundleError, ModuleSources, checked_violations, is_docstring,
                                is_pgolf, module_path)
from pgolf.bundle.specialize import specialize
from pgolf.config import apply_mapping, config_to_toml, finalize_config, load_preset_text, shippable_config
from pgolf.config_tree import Config
from pgolf.parts import OPTIONAL_PARTS, parts_needed

BUNDLE_ENTRY = ("pgolf.run",)
LEAN_ENTRY = ("pgolf.lean",)
CONFIG_MODULE = "pgolf.config_tree"
BUNDLE_MAIN_CALL = "bundle_main(BUNDLED_PRESET, __file__, SHIPPED_PARTS)"
READABLE_NAME = "train_gpt_readable.py"


def _lines(src: str) -> list[str]:
    """Physical lines as the AST counts them (str.splitlines also breaks at \\f, \\u2028, ...)."""
    return io.StringIO(src.replace("\r\n", "\n"), newline="\n").readlines()


def _tidy_blank(lines: list[str], protected: set[int], keep: int) -> list[str]:
    """Drop blank lines beyond `keep` in a row (outside strings), and at both ends."""
    out: list[str] = []
    run = 0
    for i, line in enumerate(lines, start=1):
        if not line.strip() and i not in protected:
            run += 1
            if run > keep or not out:
                continue
            line = "\n"
        else:
            run = 0
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return out


def _import_lines(tree: ast.Module) -> list[tuple[str, str, str]]:
    """Top-level non-pgolf imports as (kind, module, alias text), one per imported name."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found += [("import", a.name, f"{a.name} as {a.asname}" if a.asname else a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not is_pgolf(node.module):
            found += [("from", node.module or "", f"{a.name} as {a.asname}" if a.asname else a.name)
                      for a in node.names]
    return [f for f in found if not is_pgolf(f[1])]


def _module_body(src: str, tree: ast.Module, keep: set[int]) -> str:
    """The module's text without imports and unreached definitions; its docstring as a comment."""
    lines = _lines(src)
    drop = dropped_lines(tree, lines, keep)
    for i, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom)) or (i == 0 and is_docstring(node)):
            drop.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    doc = ast.get_docstring(tree)
    head = [f"# {ln}".rstrip() + "\n" for ln in doc.splitlines()] + ["\n"] if doc else []
    kept = [(i, ln if ln.endswith("\n") else ln + "\n") for i, ln in enumerate(lines, 1) if i not in drop]
    protected = string_lines(tree)
    new_protected = {k for k, (i, _) in enumerate(kept, 1) if i in protected}
    return "".join(head) + "".join(_tidy_blank([ln for _, ln in kept], new_protected, 2))


def _merge_imports(found: list[tuple[str, str, str]]) -> str:
    plain = sorted({(m, a) for k, m, a in found if k == "import"})
    froms: dict[str, set[str]] = {}
    for k, m, a in found:
        if k == "from":
            froms.setdefault(m, set()).add(a)
    groups: list[list[str]] = [[], []]
    for m, a in plain:
        groups[m.split(".")[0] not in STDLIB].append(f"import {a}")
    for m in sorted(froms):
        groups[m.split(".")[0] not in STDLIB].append(f"from {m} import {', '.join(sorted(froms[m]))}")
    return "\n\n".join("\n".join(g) for g in groups if g) + "\n"


def _literal(text: str) -> str:
    """A triple-quoted literal whose value is exactly `text`."""
    body = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    lit = f'"""{body}"""'
    try:
        if ast.literal_eval(lit) == text:
            return lit
    except (SyntaxError, ValueError):
        pass
    return repr(text)


def _minify_toml(text: str) -> str:
    """Preset text without comment and blank lines, kept only if it parses to the same values."""
    short = "".join(ln for ln in text.splitlines(keepends=True) if ln.strip() and not ln.lstrip().startswith("#"))
    try:
        return short if tomllib.loads(short) == tomllib.loads(text) else text
    except tomllib.TOMLDecodeError:
        return text


def _version() -> str:
    try:
        return importlib.metadata.version("pgolf")
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(sys.modules.get("pgolf"), "__version__", "unknown"))


def left_out_names(shipped_parts: set[str]) -> dict[str, str]:
    """Definition name -> optional part, for every part not in `shipped_parts`."""
    return {name: part for part, (_, names) in OPTIONAL_PARTS.items() if part not in shipped_parts for name in names}


def _joined(entry_modules: list[str], main_call: str, sources: dict[str, str] | None, shake: bool,
            leave_out: dict[str, str] | None = None, frozen: Config | None = None
            ) -> tuple[list[tuple[str, str, ast.Module, set[int]]], list[str]]:
    """(module, renamed source, tree, kept statement indices) of every module that keeps code,
    and the left-out names that kept code still mentions (each gets a stub). With `frozen`, the
    code is first specialized to that config (bundle.freeze)."""
    mods = ModuleSources(sources)
    order = ordered_modules(entry_modules, mods)
    bad = checked_violations(order, mods)
    if bad:
        raise BundleError(f"{len(bad)} bundle rule violation(s): {' | '.join(bad)}")
    plan = rename_plan({name: mods.get(name)[1] for name in order})
    texts = {name: rename_names(name, mods.get(name)[0], plan[name]) for name in order}
    trees = {name: ast.parse(texts[name], filename=module_path(name)) for name in order}
    if shake:
        try:
            roots = {n.id for n in ast.walk(ast.parse(main_call)) if isinstance(n, ast.Name)}
        except SyntaxError as e:
            raise BundleError(f"main call {main_call!r} does not compile: {e.msg}") from None
        keep, stubbed = reachable(trees, roots | ({"unshipped"} if leave_out else set()), frozenset(leave_out or ()))
        if frozen is not None:
            def shake_trees(ts: dict[str, ast.Module]) -> dict[str, set[int]]:
                return reachable(ts, roots | ({"unshipped"} if leave_out else set()), frozenset(leave_out or ()))[0]
            texts = specialize(texts, frozen, shake_trees)
            texts[CONFIG_MODULE] = frozen_config_source(texts[CONFIG_MODULE], frozen)
            trees = {m: ast.parse(texts[m], filename=module_path(m)) for m in order}
            keep, stubbed = reachable(trees, roots | ({"unshipped"} if leave_out else set()),
                                      frozenset(leave_out or ()))
    else:
        keep, stubbed = {name: set(range(len(trees[name].body))) for name in order}, set()
    if stubbed and not any("unshipped" in defined_names(trees[m].body[i]) for m in order for i in keep[m]):
        raise BundleError("left-out parts need pgolf.parts.unshipped in the bundle; import it in the entry module")
    for name in order:
        early = names_used_at_import(trees[name], keep[name]) & stubbed
        if early:
            # A stub is bound only after every module has run, too late for import-time use.
            raise BundleError(f"{module_path(name)} uses left-out `{sorted(early)[0]}` at import time; "
                              "use it only inside functions")
    return [(name, texts[name], trees[name], keep[name]) for name in order if keep[name]], sorted(stubbed)


def bundle_modules(entry_modules: list[str], main_call: str = BUNDLE_MAIN_CALL,
                   sources: dict[str, str] | None = None, leave_out: dict[str, str] | None = None,
                   frozen: Config | None = None) -> list[str]:
    """The modules whose code the bundle ships (reached from `main_call`), in bundle order."""
    return [name for name, *_ in _joined(list(entry_modules), main_call, sources, True, leave_out, frozen)[0]]


def build_bundle(entry_modules: list[str], preset_toml: str, main_call: str, minify: bool = False, *,
                 preset_name: str = "", sources: dict[str, str] | None = None, version: str | None = None,
                 shake: bool = True, shipped_parts: set[str] | None = None, frozen: Config | None = None) -> str:
    """One self-contained script: the modules reachable from `entry_modules`, then the preset, then main.

    The result defines `BUNDLED_PRESET` (the preset TOML text) and runs `main_call` under
    `if __name__ == "__main__":`. With `shake`, top-level definitions `main_call` never
    reaches are left out. With `shipped_parts`, the optional parts (pgolf.parts) not in it are
    left out too, their names bound to stubs, and `SHIPPED_PARTS` names the shipped ones (the
    main call checks the config against it). With `frozen`, the code is specialized to that config
    (bundle.freeze) and no preset is written: `main_call` carries the config. `minify` returns the same program as one syntax tree without
    comments, docstrings and function annotations. Same inputs give the same bytes. Raises
    BundleError when the modules break the bundle rules or the result does not compile.
    """
    found: list[tuple[str, str, str]] = []
    parts: list[str] = []
    leave_out = None if shipped_parts is None else left_out_names(shipped_parts)
    joined, stubbed = _joined(list(entry_modules), main_call, sources, shake, leave_out, frozen)
    for name, src, tree, keep in joined:
        found += _import_lines(tree)
        parts.append(f"# ---- {module_path(name)} ----\n{_module_body(src, tree, keep)}")
    banner = (f"# train_gpt.py: {BUNDLE_MARK}; do not edit, regenerate with `pgolf bundle`.\n"
              f"# pgolf {version or _version()} | entry: {', '.join(entry_modules)} | "
              f"preset: {preset_name or '-'}\n")
    preset = _minify_toml(preset_toml) if minify else preset_toml
    tail = "" if frozen is not None else f"BUNDLED_PRESET = {_literal(preset)}\n"
    if shipped_parts is not None:
        tail += f"SHIPPED_PARTS = {tuple(sorted(shipped_parts))!r}\n"
        tail += "".join(f"{n} = unshipped({leave_out[n]!r})\n" for n in stubbed)
    tail += f"\nif __name__ == \"__main__\":\n    {main_call}\n"
    text = "\n\n\n".join([banner + _merge_imports(found).rstrip("\n") + "\n", *parts, tail])
    try:
        compile(text, "train_gpt.py", "exec")
    except SyntaxError as e:
        raise BundleError(f"generated bundle does not compile: line {e.lineno}: {e.msg}") from None
    if minify:
        # The first line keeps the mark, so write_bundle may replace the file later.
        text = f"# {BUNDLE_MARK} (minified)\n" + minify_source(text)
    return text


def write_bundle(out_path: str | os.PathLike, text: str) -> None:
    """Write `text` atomically; refuse to replace a file that pgolf bundle did not generate."""
    path = Path(out_path)
    if path.exists():
        head = path.read_text(encoding="utf-8", errors="replace").splitlines()[:3]
        if not any(BUNDLE_MARK in line for line in head):
            raise BundleError(f"{path} exists and was not generated by pgolf bundle; move it away or pick another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def bundle_preset_text(cfg: Config) -> str:
    """TOML of the fields where `cfg` differs from the defaults: the bundle's preset for this config."""
    full, base = config_to_toml(cfg), set(_toml_items(config_to_toml(Config())))
    sections: dict[str, list[str]] = {}
    for section, line in _toml_items(full):
        if (section, line) not in base:
            sections.setdefault(section, []).append(line)
    return "".join(f"[{name}]\n" + "".join(f"{ln}\n" for ln in lines) for name, lines in sections.items())


def _toml_items(text: str) -> list[tuple[str, str]]:
    section, items = "", []
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[] ")
        elif line.strip():
            items.append((section, line))
    return items


def frozen_config_source(src: str, cfg: Config) -> str:
    """config_tree's source with each section class holding `cfg`'s values as its defaults (all
    fields, one plain line each): a lean bundle's `Config()` is its frozen config, and nothing
    in it reads a field's declared type."""
    lines = io.StringIO(src).readlines()
    sections = {type(getattr(cfg, f.name)).__name__: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    tree = ast.parse(src)
    for node in sorted((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in sections),
                       key=lambda n: n.lineno, reverse=True):
        sec = sections[node.name]
        body = ["    # frozen by `pgolf bundle` (quant.code_lean): this run's values\n"]
        for f in dataclasses.fields(sec):
            text = repr(getattr(sec, f.name))
            if ast.literal_eval(text) != getattr(sec, f.name):
                raise BundleError(f"{f.name}={text} does not round-trip as a literal; set quant.code_lean=false")
            body.append(f"    {f.name}: object = {text}\n")
        lines[node.body[0].lineno - 1:node.end_lineno] = body
    return "".join(lines)


def bundle_for_config(cfg: Config, preset_name: str, minify: bool = False) -> str:
    """The train_gpt.py that runs `cfg` (as its preset; the reference env vars still override it),
    with the optional parts `cfg` uses and no others. With quant.code_lean, the config is frozen in
    it and the code specialized to it (pgolf.lean)."""
    if cfg.quant.code_lean:
        return build_bundle(list(LEAN_ENTRY), "", "lean_main(Config(), __file__)", minify,
                            preset_name=preset_name, shipped_parts=parts_needed(cfg), frozen=cfg)
    return build_bundle(list(BUNDLE_ENTRY), bundle_preset_text(cfg), BUNDLE_MAIN_CALL, minify, preset_name=preset_name,
                        shipped_parts=parts_needed(cfg))


def shipped_files(cfg: Config, form: str = "") -> dict[str, str]:
    """File name -> text of the code a run of `cfg` ships; train_gpt.py is the counted file.

    `form` (default: cfg.quant.code_form): plain (readable), minified, or compressed
    (self-extracting in cfg.quant.code_codec, with the readable file beside it so the counted
    code stays readable).
    """
    cfg = shippable_config(cfg)
    form = form or cfg.quant.code_form
    readable = bundle_for_config(cfg, "run")
    if form == "plain":
        return {"train_gpt.py": readable}
    if form == "minified":
        return {"train_gpt.py": bundle_for_config(cfg, "run", minify=True)}
    packed = build_compressed_bundle(bundle_for_config(cfg, "run", minify=True), READABLE_NAME, cfg.quant.code_codec)
    return {"train_gpt.py": packed, READABLE_NAME: readable}


def shipped_source(cfg: Config) -> str:
    """The readable bundle text for this config: what a log records as the code of the run."""
    return bundle_for_config(shippable_config(cfg), "run")


def export_bundle(out_path: str | os.PathLike, preset: str, entry_modules: tuple[str, ...] = BUNDLE_ENTRY,
                  main_call: str = BUNDLE_MAIN_CALL, minify: bool = False,
                  compressed: bool = False, sources: dict[str, str] | None = None) -> dict[str, int | str]:
    """Generate and write the bundle for `preset` (a preset name or a .toml path); returns its sizes.

    With `compressed`, also writes `<stem>_compressed.py` (the minified text, self-extracting) beside it.
    """
    preset_text = Path(preset).read_text(encoding="utf-8") if preset.endswith(".toml") else load_preset_text(preset)
    name = Path(preset).stem
    # Optional parts are a property of the run entry; another main call ships everything it reaches.
    cfg = _preset_config(preset_text, preset) if main_call == BUNDLE_MAIN_CALL else None
    parts = parts_needed(cfg) if cfg is not None else None
    text = build_bundle(list(entry_modules), preset_text, main_call, minify, preset_name=name, sources=sources,
                        shipped_parts=parts)
    path = Path(out_path)
    write_bundle(path, text)
    sizes: dict[str, int | str] = {"path": str(path), "bytes": len(text.encode("utf-8"))}
    if compressed:
        small = text if minify else build_bundle(list(entry_modules), preset_text, main_call, True,
                                                 preset_name=name, sources=sources, shipped_parts=parts)
        packed = build_compressed_bundle(small, path.name, cfg.quant.code_codec if cfg is not None else "lzma")
        cpath = path.with_name(f"{path.stem}_compressed.py")
        write_bundle(cpath, packed)
        sizes.update(compressed_path=str(cpath), compressed_bytes=len(packed.encode("utf-8")))
    return sizes


def _preset_config(preset_text: str, source: str) -> Config:
    cfg = Config()
    apply_mapping(cfg, tomllib.loads(preset_text), source)
    finalize_config(cfg)
    return cfg
