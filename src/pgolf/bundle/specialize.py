"""A lean bundle's code: specialized to its frozen config (bundle.freeze) and without the methods
no kept code calls, repeated until neither changes anything."""

import ast
import hashlib
import importlib
import io
from typing import Any, Callable

from pgolf.bundle.freeze import Freezer, freeze_source
from pgolf.bundle.join import unused_methods
from pgolf.bundle.rules import BundleError, is_pgolf
from pgolf.config_tree import Config


def external_attrs_resolver(trees: list[ast.Module]) -> Callable[[ast.expr], set[str] | None]:
    """base class expression -> its attribute names, resolved against the modules' own imports
    (torch, ...); None when it does not resolve. Only third-party and stdlib modules are imported."""
    names: dict[str, Any] = {}
    for tree in trees:
        for node in tree.body:
            try:
                if isinstance(node, ast.Import):
                    for a in node.names:
                        if not is_pgolf(a.name):
                            module = importlib.import_module(a.name)
                            names[a.asname or a.name.split(".")[0]] = (
                                module if a.asname else importlib.import_module(a.name.split(".")[0]))
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and not is_pgolf(node.module):
                    module = importlib.import_module(node.module or "")
                    for a in node.names:
                        names[a.asname or a.name] = getattr(module, a.name)
            except (ImportError, AttributeError):  # an optional package (triton) missing: its classes keep every method
                continue

    def lookup(node: ast.expr) -> Any:
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.Attribute):
            return getattr(lookup(node.value), node.attr)
        raise KeyError(ast.unparse(node))

    def resolve(base: ast.expr) -> set[str] | None:
        try:
            return set(dir(lookup(base)))
        except (KeyError, AttributeError):
            return None
    return resolve


def _without(src: str, nodes: list[ast.stmt]) -> str:
    """`src` without the lines of `nodes` (with their decorators and the comment lines just above)."""
    if not nodes:
        return src
    lines = io.StringIO(src).readlines()
    drop: set[int] = set()
    for node in nodes:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        while first > 1 and lines[first - 2].lstrip().startswith("#"):
            first -= 1
        drop.update(range(first, node.end_lineno + 1))
    return "".join(line for i, line in enumerate(lines, 1) if i not in drop)


# Specialized sources by (sources, config): `pgolf bundle` and `pgolf info` build the readable and
# the counted text of one config, and both start from the same specialization.
_DONE: dict[str, dict[str, str]] = {}


def specialize(texts: dict[str, str], cfg: Config,
               shake: Callable[[dict[str, ast.Module]], dict[str, set[int]]]) -> dict[str, str]:
    """Module sources specialized to `cfg`: decided tests cut (freeze_source) and the methods no
    kept code calls dropped, until neither changes anything (each can unlock the other: a cut
    branch was a method's last caller, a dropped method was the code that changed a field).
    `shake(trees)` gives the kept top-level statements per module (the same for the same trees)."""
    key = hashlib.sha256(repr((sorted(texts.items()), cfg)).encode("utf-8")).hexdigest()
    if key not in _DONE:
        if len(_DONE) >= 8:
            _DONE.pop(next(iter(_DONE)))
        _DONE[key] = _specialize(texts, cfg, shake)
    return dict(_DONE[key])


def _specialize(texts: dict[str, str], cfg: Config,
                shake: Callable[[dict[str, ast.Module]], dict[str, set[int]]]) -> dict[str, str]:
    parsed: dict[str, ast.Module] = {}  # text -> tree (only read, never changed): most modules settle early

    def parse(text: str) -> ast.Module:
        if text not in parsed:
            parsed[text] = ast.parse(text)
        return parsed[text]
    resolver = external_attrs_resolver([parse(t) for t in texts.values()])
    for _ in range(20):
        trees = {m: parse(t) for m, t in texts.items()}
        keep = shake(trees)
        freezer = Freezer(cfg, [ast.Module([trees[m].body[i] for i in sorted(keep[m])], []) for m in texts], resolver)
        new = {m: freeze_source(t, freezer, trees[m]) if keep[m] else t for m, t in texts.items()}
        trees = {m: parse(t) for m, t in new.items()}
        dead = unused_methods(trees, shake(trees), resolver)
        new = {m: _without(t, dead[m]) for m, t in new.items()}
        if new == texts:
            return texts
        texts = new
    raise BundleError("specializing the bundle did not settle after 20 rounds; ship quant.code_lean=false and report it")
