"""What bundled code does with names and config fields, read from its syntax trees: which fields
it may change at run time, which names a function binds, which attributes a class declares with a
config type. bundle.freeze decides tests from these facts."""

import ast
import dataclasses

from pgolf.bundle.rules import BundleError
from pgolf.config_tree import Config

# What a lean bundle's environment may still set (pgolf.lean), so code never sees them frozen.
RUNTIME_FIELDS = frozenset({"path", "tokenizer_path", "cache_dir", "out_dir", "run_id", "seed", "device"})

ANY_FIELD = "*"  # in exempt_fields: some code may change any field


def config_classes() -> dict[str, tuple[str, ...]]:
    """Config class name -> its path from the root (`Config` -> (), `ModelConfig` -> ("model",))."""
    out: dict[str, tuple[str, ...]] = {Config.__name__: ()}
    for f in dataclasses.fields(Config):
        out[type(getattr(Config(), f.name)).__name__] = (f.name,)
    return out


def exempt_fields(trees: list[ast.Module]) -> set[str]:
    """Field names some code may change at run time (see the module doc)."""
    names = set(RUNTIME_FIELDS)
    configs = config_classes()
    # `self.x = ...` in a class that is not a config sets that object's own attribute.
    own = {id(n) for tree in trees for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name not in configs
           for n in ast.walk(c) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
           and n.value.id == "self"}
    fields_of = {c: [f.name for f in dataclasses.fields(_config_class(c))] for c in configs}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if id(node) not in own:
                    names.add(node.attr)
            elif isinstance(node, ast.Call):
                fn = node.func
                called = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
                if called in configs:
                    # A config made by its constructor holds the frozen defaults but what the call passes.
                    names.update(k.arg for k in node.keywords if k.arg)
                    if node.args:
                        names.update(fields_of[called][:len(node.args)] if not any(
                            isinstance(a, ast.Starred) for a in node.args) else fields_of[called])
                    if any(k.arg is None for k in node.keywords):
                        names.add(ANY_FIELD)
                elif called == "replace":
                    names.update(k.arg for k in node.keywords if k.arg)
                    if any(k.arg is None for k in node.keywords):
                        names.add(ANY_FIELD)  # `replace(x, **kw)` may change any field
                elif called in ("setattr", "delattr") and node.args:
                    if len(node.args) < 2 or not isinstance(node.args[1], ast.Constant):
                        raise BundleError(f"line {node.lineno}: {called} with a computed name can change any config "
                                          "field; a lean bundle cannot freeze code that calls it")
                    names.add(node.args[1].value)
    return names


def _config_class(name: str) -> type:
    path = config_classes()[name]
    return type(getattr(Config(), path[0])) if path else Config


def class_attr_types(trees: list[ast.Module], classes: dict[str, tuple[str, ...]]) -> dict[str, dict[str, str]]:
    """Class name -> {attribute: config class} from class-level annotations (`cfg: Config`)."""
    out: dict[str, dict[str, str]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for st in node.body:
                    if (isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)
                            and isinstance(st.annotation, ast.Name) and st.annotation.id in classes):
                        out.setdefault(node.name, {})[st.target.id] = st.annotation.id
    return out


def bound_counts(body: list[ast.stmt]) -> dict[str, int]:
    """How often each name is bound in `body`, nested functions and classes excluded."""
    count: dict[str, int] = {}

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                if not isinstance(child, ast.Lambda):
                    count[child.name] = count.get(child.name, 0) + 1
                continue
            if isinstance(child, ast.Name) and isinstance(child.ctx, (ast.Store, ast.Del)):
                count[child.id] = count.get(child.id, 0) + 1
            elif isinstance(child, (ast.Global, ast.Nonlocal)):
                for n in child.names:
                    count[n] = count.get(n, 0) + 2
            elif isinstance(child, ast.alias):
                n = (child.asname or child.name).split(".")[0]
                count[n] = count.get(n, 0) + 1
            elif isinstance(child, ast.ExceptHandler) and child.name:
                count[child.name] = count.get(child.name, 0) + 1
            elif isinstance(child, (ast.MatchAs, ast.MatchStar)) and child.name:  # `case [x, *rest]:`
                count[child.name] = count.get(child.name, 0) + 1
            elif isinstance(child, ast.MatchMapping) and child.rest:  # `case {**rest}:`
                count[child.rest] = count.get(child.rest, 0) + 1
            visit(child)
    for st in body:
        visit(ast.Module([st], []))
    return count


def attribute_stores(trees: list[ast.Module]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """How often code assigns (or deletes) each attribute name: (class -> name -> count of
    `self.name = ...` directly in a method of that class whose first parameter is a `self` it
    never rebinds, name -> count of every other store, setattr and delattr included)."""
    own: dict[str, dict[str, int]] = {}
    other: dict[str, int] = {}
    mine: set[int] = set()
    for tree in trees:
        for cls in ast.walk(tree):
            if not isinstance(cls, ast.ClassDef):
                continue
            for fn in cls.body:
                if (isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.args.args
                        and fn.args.args[0].arg == "self" and not bound_counts(fn.body).get("self")):
                    for node in _own_scope_nodes(fn):
                        if (isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del))
                                and isinstance(node.value, ast.Name) and node.value.id == "self"):
                            mine.add(id(node))
                            counts = own.setdefault(cls.name, {})
                            counts[node.attr] = counts.get(node.attr, 0) + 1
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)) and id(node) not in mine:
                other[node.attr] = other.get(node.attr, 0) + 1
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("setattr", "delattr") and len(node.args) > 1
                  and isinstance(node.args[1], ast.Constant)):
                other[node.args[1].value] = other.get(node.args[1].value, 0) + 2
    return own, other


def _own_scope_nodes(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    """The nodes of `fn`'s body outside nested functions, lambdas and classes (there `self` may
    be another name)."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = list(fn.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        out.append(node)
        todo += list(ast.iter_child_nodes(node))
    return out


def call_aliases(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, ast.Assign]:
    """Local names `fn` binds once, by `alias = name` with `name` not bound in `fn`, and then only
    calls, all in `fn`'s own scope (no nested function or lambda names the alias): alias -> that
    assignment. A call of the alias is a call of `name`."""
    a = fn.args
    params = {p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if p}
    counts = bound_counts(fn.body)
    own = _own_scope_nodes(fn)
    nested = {n.id for node in ast.walk(fn) if node is not fn and isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)) for n in ast.walk(node)
        if isinstance(n, ast.Name)}
    nested |= {n for node in ast.walk(fn) if isinstance(node, (ast.Global, ast.Nonlocal)) for n in node.names}
    found = {st.targets[0].id: st for st in own if isinstance(st, ast.Assign) and len(st.targets) == 1
             and isinstance(st.targets[0], ast.Name) and isinstance(st.value, ast.Name)}
    calls = {id(n.func) for n in own if isinstance(n, ast.Call)}
    out = {}
    for alias, st in found.items():
        target = st.value.id  # type: ignore[attr-defined]
        loads = [n for n in own if isinstance(n, ast.Name) and n.id == alias and isinstance(n.ctx, ast.Load)]
        if (counts.get(alias) == 1 and alias not in params and alias not in nested and not counts.get(target)
                and target not in params and all(id(n) in calls for n in loads)):
            out[alias] = st
    return out


def top_level_names(st: ast.stmt) -> list[str]:
    """The names a statement binds in its own scope."""
    if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [st.name]
    if isinstance(st, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in st.names]
    return [n.id for n in ast.walk(st) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))]


def reads_and_nonlocals(fn: ast.FunctionDef | ast.AsyncFunctionDef
                        ) -> tuple[dict[str, list[tuple[int, int]]], set[str]]:
    """Where `fn`'s body (nested scopes included) reads each name, and the names a nested
    function declares nonlocal (it may rebind them)."""
    reads: dict[str, list[tuple[int, int]]] = {}
    rebound: set[str] = set()
    for st in fn.body:
        for node in ast.walk(st):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                reads.setdefault(node.id, []).append((node.lineno, node.col_offset))
            elif isinstance(node, ast.Nonlocal):
                rebound.update(node.names)
    return reads, rebound


def assigned_pairs(target: ast.expr, value: ast.expr) -> list[tuple[ast.expr, ast.expr]]:
    """(target, value) pairs of one assignment: `a, b = x, y` element-wise (no starred item)."""
    if (isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List))
            and len(target.elts) == len(value.elts)
            and not any(isinstance(e, ast.Starred) for e in [*target.elts, *value.elts])):
        return list(zip(target.elts, value.elts))
    return [(target, value)]
