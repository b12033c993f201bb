"""What bundle.freeze knows of the code beyond config-typed names, read from all of it: the value
(or config class) every call passes a parameter, what constructors store in `self.x`, module-level
constants, and the classes whose call surely makes a plain new instance."""

import ast
import collections.abc
import contextlib
import io
import logging
import threading
from typing import Any

from pgolf.bundle.fields import assigned_pairs, attribute_stores, bound_counts, top_level_names
from pgolf.bundle.values import PASS_THROUGH_DECORATORS, SHAPE, UNKNOWN, Instance, Scope


def _protocol_names() -> frozenset[str]:
    """Methods outside code may call on any object handed to it (file-like, mapping, iterator,
    context manager, thread, logging handler): such a name is never a method only the code calls."""
    kinds = (object, dict, list, set, str, bytes, io.IOBase, io.TextIOBase, io.BufferedIOBase, io.RawIOBase,
             threading.Thread, logging.Handler, logging.Filter, contextlib.AbstractContextManager,
             *(getattr(collections.abc, n) for n in collections.abc.__all__))
    return frozenset(n for t in kinds for n in dir(t))


class CodeFacts:
    """The facts a Freezer decides with (bundle.freeze.Freezer sets its fields, walks the scopes)."""

    def plain_attr(self, cls: str, attr: str) -> bool:
        """Whether `self.attr = v` in the constructor of `cls` only stores v: no base class from
        outside the code, no __setattr__, no class-level `attr` (a property), and no other code
        runs that constructor (a subclass's super().__init__, `cls.__init__(obj)`)."""
        if cls not in self._class_defs or cls in self._init_callers:
            return False
        lineage = self._lineage(cls)
        names = {n for c in lineage for st in self._class_defs[c].body for n in top_level_names(st)}
        return attr not in names and "__setattr__" not in names and all(
            isinstance(b, ast.Name) and (b.id in self._class_defs or b.id == "object")
            for c in lineage for b in self._class_defs[c].bases)

    def _plain_classes(self, trees: list[ast.Module]) -> dict[str, Instance]:
        """Classes whose call surely makes a new instance: defined once at module level, from
        classes of the code or `object` only, no __new__, no metaclass; the instance of each."""
        defined: dict[str, int] = {}
        for tree in trees:
            for n, k in bound_counts(tree.body).items():
                defined[n] = defined.get(n, 0) + k
            for node in ast.walk(tree):  # `obj.__class__ = ...`, `Cls.__len__ = ...`: none is plain
                if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr in SHAPE
                        or isinstance(node, ast.Constant) and node.value in SHAPE):
                    return {}
        out: dict[str, Instance] = {}
        for name in self._class_defs:
            lineage, plain = self._lineage(name), True
            for c in lineage:
                node = self._class_defs[c]
                plain &= defined.get(c) == 1 and not node.keywords and not node.decorator_list and all(
                    isinstance(b, ast.Name) and (b.id in self._class_defs or b.id == "object") for b in node.bases)
            methods = {n for c in lineage for st in self._class_defs[c].body for n in top_level_names(st)}
            if plain and "__new__" not in methods:
                out[name] = Instance(name, UNKNOWN if methods & {"__bool__", "__len__"} else True)
        return out

    def _module_consts(self, trees: list[ast.Module]) -> dict[str, Any]:
        """Module-level names bound once, at module level, to a known value (`INT_LAYOUTS = (...)`)
        that no function declares global: every function sees that value."""
        counts: dict[str, int] = {}
        for tree in trees:
            for n, k in bound_counts(tree.body).items():
                counts[n] = counts.get(n, 0) + k
            for node in ast.walk(tree):
                if isinstance(node, ast.Global):
                    for n in node.names:
                        counts[n] = counts.get(n, 0) + 2
        scope = Scope(self, {}, {})
        for tree in trees:
            for st in tree.body:
                if isinstance(st, ast.Assign) and len(st.targets) == 1:
                    pairs = assigned_pairs(st.targets[0], st.value)
                elif isinstance(st, ast.AnnAssign) and st.value is not None and st.simple:
                    pairs = [(st.target, st.value)]
                else:
                    continue
                for t, v in pairs:
                    if isinstance(t, ast.Name) and counts.get(t.id) == 1:
                        value = scope.stored_value(v)
                        if value is not UNKNOWN:
                            scope.consts[t.id] = value
        return scope.consts

    def _propagate(self, trees: list[ast.Module]) -> None:
        """Parameters of module-level functions that every call passes the same known value
        (`lr_multiplier(..., mode=cfg.schedule.warmdown_mode)` everywhere): frozen inside them.
        A function used other than by a direct call (stored, passed) keeps all its parameters."""
        defs: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        inits: dict[str, ast.FunctionDef] = {}  # class -> __init__, for `Class(...)` calls
        for tree in trees:
            for node in tree.body:
                # A decorator may call the function itself (torch.library ops): only known pass-throughs.
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and all(
                        ast.unparse(d) in PASS_THROUGH_DECORATORS for d in node.decorator_list):
                    defs[node.name] = node
                elif isinstance(node, ast.ClassDef) and not node.decorator_list:
                    init = next((st for st in node.body if isinstance(st, ast.FunctionDef) and st.name == "__init__"),
                                None)
                    if init is not None and not init.decorator_list:
                        inits[node.name] = init
        # A class whose instances some code makes other than by `Class(...)` (`cls(...)` in a
        # classmethod, `type(x)(...)`) keeps its parameters; a base class is a use (`loaded`).
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "cls"
                           for n in ast.walk(node)):
                        inits.pop(node.name, None)
                elif isinstance(node, ast.Call) and (
                        isinstance(node.func, ast.Attribute) and node.func.attr == "__class__"
                        or isinstance(node.func, ast.Call) and ast.unparse(node.func.func) == "type"):
                    inits.clear()
        own_stores, other_stores = attribute_stores(trees)
        called, loaded = set(), set()
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    called.add(id(node.func))
                # An annotation names a class without using it.
                notes = [node.annotation] if isinstance(node, (ast.arg, ast.AnnAssign)) and node.annotation else []
                notes += [node.returns] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns \
                    else []
                called.update(id(n) for note in notes for n in ast.walk(note))
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    # `run = eval_record_ttt` then only `run(...)`: calls of that function
                    called.update(id(st.value) for st in self.function_syntax(node)[1].values())
            for node in ast.walk(tree):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and id(node) not in called:
                    loaded.add(node.id)
        methods = self._called_methods(trees)
        for _ in range(8):
            seen: dict[str, list[dict[str, Any]]] = {}
            seen_types: dict[str, list[dict[str, str]]] = {}

            def on_call(call: ast.Call, scope: Scope | None) -> None:
                if isinstance(call.func, ast.Attribute) and call.func.attr in methods:
                    name, (fn, skip) = f"{methods[call.func.attr][0]}.{call.func.attr}", (methods[call.func.attr][1], 1)
                else:
                    name = call.func.id if isinstance(call.func, ast.Name) else ""
                    name = scope.aliases.get(name, name) if scope else name
                    if name in loaded or name not in defs and name not in inits:
                        return
                    fn, skip = (defs[name], 0) if name in defs else (inits[name], 1)
                seen.setdefault(name, []).append(bound_args(fn, call, scope, skip))
                seen_types.setdefault(name, []).append(bound_types(fn, call, scope, skip))
            for tree in trees:
                self.decisions(tree, on_call)
            values: dict[str, dict[str, Any]] = {}
            for name, sites in seen.items():
                first = sites[0]
                agreed = {p: v for p, v in first.items() if v is not UNKNOWN and all(
                    p in s and type(s[p]) is type(v) and s[p] == v for s in sites[1:])}
                if agreed:
                    values[name] = agreed
            # A parameter every call passes a config of one class is that config (`ecfg: Any`).
            types = {name: {p: c for p, c in sites[0].items() if all(s.get(p) == c for s in sites[1:])}
                     for name, sites in seen_types.items()}
            types = {name: t for name, t in types.items() if t}
            attr_types = {c: dict(t) for c, t in self._noted_types.items()}
            attrs = {}
            for cls, init in inits.items():
                if cls not in loaded:
                    # How often code may set each attribute of a `cls` object: anywhere on any
                    # object, plus `self.x = ...` in the methods of cls and of its bases.
                    stored = dict(other_stores)
                    for c in self._lineage(cls):
                        for a, n in own_stores.get(c, {}).items():
                            stored[a] = stored.get(a, 0) + n
                    attrs[cls], kinds = self._init_attrs(cls, init, stored)
                    for a, kind in kinds.items():  # `self.cfg = cfg` with cfg: ModelConfig
                        if attr_types.setdefault(cls, {}).setdefault(a, kind) != kind:
                            del attr_types[cls][a]  # an annotation says otherwise: neither
            attrs = {cls: a for cls, a in attrs.items() if a}
            attr_types = {c: t for c, t in attr_types.items() if t}
            if (values == self.param_values and attrs == self.self_values and types == self.param_types
                    and attr_types == self.attr_types):
                return
            self.param_values, self.self_values, self.param_types = values, attrs, types
            self.attr_types = attr_types

    def _called_methods(self, trees: list[ast.Module]) -> dict[str, tuple[str, ast.FunctionDef]]:
        """Method name -> (its class, it) for the methods only ever called as `obj.name(...)`:
        defined by one class of the code (of a module-level class, not a dunder, no decorator
        but pass-throughs), that name never used otherwise (`f = obj.name`, `getattr(obj, "name")`,
        `Cls.name(obj)`), and no base class from outside the code has it (a framework calls it)."""
        found: dict[str, list[tuple[str, ast.AST]]] = {}
        for cls, node in self._class_defs.items():
            framework = self._framework_attrs(cls)
            for st in node.body:
                for n in top_level_names(st):
                    found.setdefault(n, []).append((cls, st))
                    if framework is None or n in framework:
                        found[n].append(("", st))  # a framework may call it: never frozen
        calls, other = set(), set()
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and not (
                        isinstance(node.func.value, ast.Name) and node.func.value.id in self._class_defs):
                    calls.add(id(node.func))
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and id(node) not in calls:
                    other.add(node.attr)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    other.add(node.value)
        protocol = _protocol_names()
        return {n: (defs[0][0], defs[0][1]) for n, defs in found.items()  # type: ignore[misc]
                if len(defs) == 1 and isinstance(defs[0][1], ast.FunctionDef) and n not in other
                and n not in protocol
                and not (n.startswith("__") and n.endswith("__")) and defs[0][1].args.args
                and all(ast.unparse(d) in PASS_THROUGH_DECORATORS for d in defs[0][1].decorator_list)}

    def _init_attrs(self, cls: str, init: ast.FunctionDef, stored: dict[str, int]
                    ) -> tuple[dict[str, Any], dict[str, str]]:
        """(value, config class) of each `self.x` of class `cls` that a statement of __init__ sets
        to a known value or a config, when no code anywhere assigns it again (an attribute of that
        name on any object counts) and no base class from outside the code has it."""
        framework = self._framework_attrs(cls)
        if framework is None:
            return {}, {}
        scope = self._function_scope(init, None, cls)
        out: dict[str, Any] = {}
        kinds: dict[str, str] = {}
        for st in init.body:
            if not (isinstance(st, ast.Assign) and len(st.targets) == 1):
                continue
            for t, v in assigned_pairs(st.targets[0], st.value):
                if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
                        and stored.get(t.attr) == 1 and t.attr not in framework):
                    value, kind = scope.stored_value(v), scope.type_of(v)
                    if value is not UNKNOWN:
                        out[t.attr] = value
                    if kind:
                        kinds[t.attr] = kind
        return out, kinds

    def _lineage(self, cls: str) -> set[str]:
        """`cls` and its base classes defined in the code."""
        out, todo = set(), [cls]
        while todo:
            c = todo.pop()
            if c in self._class_defs and c not in out:
                out.add(c)
                todo += [b.id for b in self._class_defs[c].bases if isinstance(b, ast.Name)]
        return out

    def _framework_attrs(self, cls: str, seen: frozenset[str] = frozenset()) -> set[str] | None:
        """The attribute names `cls` gets from base classes outside the code, or None when a base
        is unknown."""
        names: set[str] = set()
        for base in self._class_defs[cls].bases:
            if isinstance(base, ast.Name) and base.id in self._class_defs and base.id not in seen:
                inner = self._framework_attrs(base.id, seen | {cls})
            elif isinstance(base, ast.Name) and base.id == "object":
                inner = set()
            else:
                inner = self.external_attrs(base) if self.external_attrs else None
            if inner is None:
                return None
            names |= inner
        return names


def bound_args(fn: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call, scope: "Scope | None",
                skip: int = 0) -> dict[str, Any]:
    """Parameter -> the value this call passes (a default when it passes none), or UNKNOWN;
    `skip` leading parameters the call does not pass (`self` of a constructor)."""
    a = fn.args
    if any(isinstance(x, ast.Starred) for x in call.args) or any(k.arg is None for k in call.keywords):
        return {}
    positional = [*a.posonlyargs, *a.args][skip:]
    out: dict[str, Any] = {}
    defaults = dict(zip([p.arg for p in positional][len(positional) - len(a.defaults):], a.defaults))
    defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
    for p, d in defaults.items():
        out[p] = d.value if isinstance(d, ast.Constant) else UNKNOWN
    if len(call.args) > len(positional):
        return {}
    for p, x in zip(positional, call.args):
        out[p.arg] = scope.stored_value(x) if scope else (x.value if isinstance(x, ast.Constant) else UNKNOWN)
    for k in call.keywords:
        out[k.arg] = scope.stored_value(k.value) if scope else (k.value.value if isinstance(k.value, ast.Constant)
                                                                 else UNKNOWN)
    return out


def bound_types(fn: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call, scope: "Scope | None",
                 skip: int = 0) -> dict[str, str]:
    """Parameter -> the config class of what this call passes it, for the arguments that are
    configs (a parameter left to its default is none)."""
    a = fn.args
    positional = [*a.posonlyargs, *a.args][skip:]
    if (scope is None or any(isinstance(x, ast.Starred) for x in call.args) or len(call.args) > len(positional)
            or any(k.arg is None for k in call.keywords)):
        return {}
    pairs = [(p.arg, x) for p, x in zip(positional, call.args)] + [(k.arg, k.value) for k in call.keywords]
    out = {}
    for p, x in pairs:
        kind = scope.type_of(x)
        if kind:
            out[p] = kind
    return out
