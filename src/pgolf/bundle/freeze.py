"""Code specialized to one frozen config: branches its config can never take are cut out of the source.

A lean bundle (`quant.code_lean`) runs exactly the config `pgolf bundle` checked, so an
`if cfg.quant.compressor == "pergroup":` is decided when the bundle is built. This pass reads
each function's config-typed names (parameters annotated with a config class, names bound
once to one, dataclass fields annotated with one), the parameters every caller passes the same
known value, and the `self.x` a constructor sets once to one; it decides every `if` /
`x if c else y` whose test reads only those and constants, and keeps the taken branch, as text: comments stay,
so the readable file is still the code that runs. The definitions only a cut branch called
are then unreached, and the bundler drops them.

A field is never frozen when code may see another value at run time: the fields an
environment variable may still set (data paths, run id, seed), any field some shipped code
assigns (`x.field = ...`) or passes to `dataclasses.replace`, and fields holding containers
(bundle.fields reads these facts from the code).
"""

import ast
import dataclasses
import io
from typing import Any, Callable

from pgolf.bundle.edits import dead_stores_cut, dead_tails_cut, if_edit, line_starts, offset, string_lines
from pgolf.bundle.fields import (ANY_FIELD, attribute_stores, bound_counts, call_aliases, class_attr_types,
                                 config_classes, exempt_fields)
from pgolf.bundle.rules import BundleError
from pgolf.config_tree import Config

_UNKNOWN = object()


class _Instance:
    """A new instance of a class of the code (`ShardSpanStream(files, bos)`): never None, and
    true when its class defines neither __bool__ nor __len__; nothing else is known of it."""

    def __init__(self, cls: str, truth: Any):
        self.cls, self.truth = cls, truth

    def __eq__(self, other: object) -> bool:  # every call site makes one of the same class
        return isinstance(other, _Instance) and other.cls == self.cls

    def __hash__(self) -> int:
        return hash(self.cls)


_SHAPE = frozenset({"__class__", "__bool__", "__len__", "__new__"})  # what makes an instance, and its truth


def _truth(v: Any) -> Any:
    return v.truth if isinstance(v, _Instance) else bool(v)
_PASS_THROUGH_DECORATORS = frozenset({"torch.no_grad()", "torch.inference_mode()"})
_SCALARS = (bool, int, float, str)
# A method under these still gets its instance as `self` (`property`: the getter does).
_SELF_DECORATORS = _PASS_THROUGH_DECORATORS | {"property"}


class _Scope:
    """The config-typed names of one function body: name -> class name."""

    def __init__(self, freezer: "Freezer", types: dict[str, str], consts: dict[str, Any] | None = None):
        self.freezer, self.types = freezer, types
        self.consts = consts or {}  # parameters every caller passes the same frozen value
        self.aliases: dict[str, str] = {}  # local name -> the function it names, only ever called
        # Per top-level statement of the body, the names known only there (a parameter before the
        # body rebinds it, a local between two bindings): never seen by nested functions.
        self.stages: list[dict[str, Any]] = []
        self.test_stages: dict[int, dict[str, Any]] = {}
        self.ranged: set[str] = set()

    def at(self, i: float) -> "_Scope":
        """The scope of the body's i-th top-level statement (i + 0.5: of that `if` statement's
        test, which runs before the branch that binds a name again)."""
        extra = self.stages[int(i)] if int(i) < len(self.stages) else {}
        if i != int(i):
            extra = {**self.test_stages.get(int(i), {}), **extra}
        if not extra:
            return self
        here = _Scope(self.freezer, self.types, {**self.consts, **extra})
        here.aliases, here.ranged = self.aliases, self.ranged | set(extra)
        return here

    def lasting(self, bound: set[str] = frozenset()) -> "_Scope":  # type: ignore[assignment]
        """This scope as code that may run later sees it (a lambda, a generator expression):
        without the names known only at this statement, nor the names `bound` there."""
        return _Scope(self.freezer, {k: v for k, v in self.types.items() if k not in bound},
                      {k: v for k, v in self.consts.items() if k not in bound and k not in self.ranged})

    def type_of(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.types.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = self.type_of(node.value)
            if owner is None:
                return None
            path = self.freezer.classes.get(owner)
            if path == () and node.attr in self.freezer.sections:
                return self.freezer.sections[node.attr]
            return self.freezer.attr_types.get(owner, {}).get(node.attr)
        return None

    def value(self, node: ast.expr) -> Any:
        """The expression's value under the frozen config, or _UNKNOWN."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.consts.get(node.id, _UNKNOWN)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = []
            for e in node.elts:
                v = self.value(e.value if isinstance(e, ast.Starred) else e)
                if (v is _UNKNOWN or isinstance(v, _Instance)
                        or isinstance(e, ast.Starred) and not isinstance(v, (tuple, list))):
                    return _UNKNOWN
                items += list(v) if isinstance(e, ast.Starred) else [v]  # (*COMPRESSORS, "pergroup")
            # Each its own type: [1] == (1,) is False, {1, 2} == {2, 1} is True.
            if not isinstance(node, ast.Set):
                return tuple(items) if isinstance(node, ast.Tuple) else items
            try:
                return frozenset(items)
            except TypeError:  # {[1]}: the code raises there
                return _UNKNOWN
        if isinstance(node, ast.Attribute):
            owner = self.type_of(node.value)
            if node.attr in self.freezer.self_values.get(owner or "", {}):
                return self.freezer.self_values[owner][node.attr]  # type: ignore[index]
            path = self.freezer.classes.get(owner or "")
            if path is None or node.attr in self.freezer.exempt or ANY_FIELD in self.freezer.exempt:
                return _UNKNOWN
            sec = self.freezer.cfg
            for p in path:
                sec = getattr(sec, p)
            if not dataclasses.is_dataclass(sec) or node.attr not in {f.name for f in dataclasses.fields(sec)}:
                return _UNKNOWN
            v = getattr(sec, node.attr)
            return v if v is None or isinstance(v, _SCALARS) else _UNKNOWN
        if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
            seq, i = self.value(node.value), self.value(node.slice)
            if isinstance(seq, tuple) and type(i) is int and -len(seq) <= i < len(seq):
                return seq[i]
            return _UNKNOWN
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            t = self.truth(node.operand)
            return _UNKNOWN if t is _UNKNOWN else not t
        if isinstance(node, ast.Compare):
            left = self.value(node.left)
            rights = [self.value(c) for c in node.comparators]
            if left is _UNKNOWN or any(r is _UNKNOWN for r in rights):
                return _UNKNOWN
            if any(isinstance(v, _Instance) for v in (left, *rights)) and not all(
                    isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
                return _UNKNOWN  # its class may define ==, <, in
            for op, right in zip(node.ops, rights):
                try:
                    ok = _COMPARE[type(op)](left, right)
                except (TypeError, KeyError):
                    return _UNKNOWN
                if not ok:
                    return False
                left = right
            return True
        if isinstance(node, ast.BoolOp):  # the operand that settles it, as `and` / `or` return it
            for i, operand in enumerate(node.values):
                v = self.value(operand)
                if v is _UNKNOWN or i == len(node.values) - 1:
                    return v
                t = _truth(v)
                if t is _UNKNOWN or t is isinstance(node.op, ast.Or):
                    return v if t is not _UNKNOWN else _UNKNOWN
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.freezer.plain_classes:
            return self.freezer.plain_classes[node.func.id]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                and not node.keywords and len(node.args) in (2, 3) and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str) and "getattr" not in self.freezer.top_names):
            # `getattr(qcfg, "field", default)` on a config-typed name: that field, when it has one
            return self.value(ast.Attribute(value=node.args[0], attr=node.args[1].value, ctx=ast.Load()))
        return _UNKNOWN

    def kept_operands(self, node: ast.BoolOp, truth_only: bool) -> list[int] | None:
        """The operands of `node` that can matter, when fewer than all: none after one whose truth
        settles it (never evaluated), and none whose known truth passes on to the next operand
        and that calls nothing; the last kept one stays when the value itself is used."""
        decisive = isinstance(node.op, ast.Or)
        truths = [self.truth(v) for v in node.values]
        end = next((i for i, t in enumerate(truths) if t is decisive), len(truths) - 1)
        keep = [i for i in range(end + 1) if not (truths[i] is (not decisive) and not any(
            isinstance(n, _EFFECTS) for n in ast.walk(node.values[i])))]
        if not truth_only and end not in keep:
            keep.append(end)  # `x or None`: None is the value when x is falsy
        if not keep or len(keep) == len(node.values):
            return None  # all of them, or none: then the test is decided as a whole (or by its If)
        return keep

    def stored_value(self, node: ast.expr) -> Any:
        """What a name, attribute or parameter bound to `node` holds for good, or _UNKNOWN: a list
        or set display anywhere in it may be the object bound (`x = []`, `x = (a, [])`,
        `x = a or []`), and code may append to it: never a constant."""
        if any(isinstance(n, (ast.List, ast.Set)) for n in ast.walk(node)):
            return _UNKNOWN
        return self.value(node)

    def truth(self, node: ast.expr) -> Any:
        """bool(expr) under the frozen config, or _UNKNOWN. An `and`/`or` operand is skipped
        only when it calls nothing, so deciding a test never drops a side effect."""
        if not isinstance(node, ast.BoolOp):
            v = self.value(node)
            return _UNKNOWN if v is _UNKNOWN else _truth(v)
        decisive = isinstance(node.op, ast.Or)  # the truth value that settles the whole test
        truths = [self.truth(v) for v in node.values]
        for i, t in enumerate(truths):
            if t is decisive and not any(isinstance(n, _EFFECTS) for v in node.values[:i] for n in ast.walk(v)):
                return decisive
        return _UNKNOWN if any(t is _UNKNOWN for t in truths) else (not decisive)


# What an operand must not hold for a test to skip it: a call, or a binding (`(n := x) and cfg.f`
# binds n even when the test is False; cutting the test would leave n unbound).
_EFFECTS = (ast.Call, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)

# Operands that bind looser than `and` / `or`, or as loose: kept in parentheses.
_LOOSE = (ast.BoolOp, ast.IfExp, ast.Lambda, ast.NamedExpr, ast.Yield, ast.YieldFrom)

_COMPARE = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
            ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
            ast.Is: lambda a, b: a is b, ast.IsNot: lambda a, b: a is not b}


class Freezer:
    """Decides tests under one frozen config; `trees` is the shipped code (what may change a field)."""

    def __init__(self, cfg: Config, trees: list[ast.Module],
                 external_attrs: Callable[[ast.expr], set[str] | None] | None = None):
        """`external_attrs(base)`: the attribute names of a base class from outside the code
        (bundle.specialize resolves them), None when unknown; without it such a class's
        attributes are never frozen (the framework may set them: nn.Module.train sets `training`)."""
        self.cfg = cfg
        self.external_attrs = external_attrs
        self.classes = config_classes()
        self.sections = {p[0]: c for c, p in self.classes.items() if p}
        self.exempt = exempt_fields(trees)
        self.top_names = {n for tree in trees for st in tree.body for n in _top_level_names(st)}
        # A class's config-typed attribute counts only while no code assigns that name.
        self._noted_types = {c: {a: t for a, t in attrs.items() if a not in self.exempt}
                             for c, attrs in class_attr_types(trees, self.classes).items()}
        self.attr_types = self._noted_types  # and what constructors store (_propagate)
        self._bound: dict[int, tuple[ast.AST, dict[str, int]]] = {}  # id(function) -> (it, bound_counts)
        self.param_values: dict[str, dict[str, Any]] = {}  # function or class -> parameter -> value
        self.self_values: dict[str, dict[str, Any]] = {}  # class -> attribute -> value
        self.param_types: dict[str, dict[str, str]] = {}  # function or class -> parameter -> config class
        self._class_defs = {node.name: node for tree in trees for node in tree.body if isinstance(node, ast.ClassDef)}
        self.module_consts: dict[str, Any] = {}
        self.plain_classes = self._plain_classes(trees)
        # Classes whose __init__ other code may run on an existing object: bases, `X.__init__`.
        self._init_callers = {b.id for c in self._class_defs.values() for b in c.bases if isinstance(b, ast.Name)} | {
            n.value.id for tree in trees for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and n.attr == "__init__" and isinstance(n.value, ast.Name)}
        self.module_consts = self._module_consts(trees)
        self._propagate(trees)

    def plain_attr(self, cls: str, attr: str) -> bool:
        """Whether `self.attr = v` in the constructor of `cls` only stores v: no base class from
        outside the code, no __setattr__, no class-level `attr` (a property), and no other code
        runs that constructor (a subclass's super().__init__, `cls.__init__(obj)`)."""
        if cls not in self._class_defs or cls in self._init_callers:
            return False
        lineage = self._lineage(cls)
        names = {n for c in lineage for st in self._class_defs[c].body for n in _top_level_names(st)}
        return attr not in names and "__setattr__" not in names and all(
            isinstance(b, ast.Name) and (b.id in self._class_defs or b.id == "object")
            for c in lineage for b in self._class_defs[c].bases)

    def _plain_classes(self, trees: list[ast.Module]) -> dict[str, _Instance]:
        """Classes whose call surely makes a new instance: defined once at module level, from
        classes of the code or `object` only, no __new__, no metaclass; the instance of each."""
        defined: dict[str, int] = {}
        for tree in trees:
            for n, k in bound_counts(tree.body).items():
                defined[n] = defined.get(n, 0) + k
            for node in ast.walk(tree):  # `obj.__class__ = ...`, `Cls.__len__ = ...`: none is plain
                if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr in _SHAPE
                        or isinstance(node, ast.Constant) and node.value in _SHAPE):
                    return {}
        out: dict[str, _Instance] = {}
        for name in self._class_defs:
            lineage, plain = self._lineage(name), True
            for c in lineage:
                node = self._class_defs[c]
                plain &= defined.get(c) == 1 and not node.keywords and not node.decorator_list and all(
                    isinstance(b, ast.Name) and (b.id in self._class_defs or b.id == "object") for b in node.bases)
            methods = {n for c in lineage for st in self._class_defs[c].body for n in _top_level_names(st)}
            if plain and "__new__" not in methods:
                out[name] = _Instance(name, _UNKNOWN if methods & {"__bool__", "__len__"} else True)
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
        scope = _Scope(self, {}, {})
        for tree in trees:
            for st in tree.body:
                if isinstance(st, ast.Assign) and len(st.targets) == 1:
                    pairs = _pairs(st.targets[0], st.value)
                elif isinstance(st, ast.AnnAssign) and st.value is not None and st.simple:
                    pairs = [(st.target, st.value)]
                else:
                    continue
                for t, v in pairs:
                    if isinstance(t, ast.Name) and counts.get(t.id) == 1:
                        value = scope.stored_value(v)
                        if value is not _UNKNOWN:
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
                        ast.unparse(d) in _PASS_THROUGH_DECORATORS for d in node.decorator_list):
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
                    called.update(id(st.value) for st in call_aliases(node).values())
            for node in ast.walk(tree):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and id(node) not in called:
                    loaded.add(node.id)
        methods = self._called_methods(trees)
        for _ in range(8):
            seen: dict[str, list[dict[str, Any]]] = {}
            seen_types: dict[str, list[dict[str, str]]] = {}

            def on_call(call: ast.Call, scope: _Scope | None) -> None:
                if isinstance(call.func, ast.Attribute) and call.func.attr in methods:
                    name, (fn, skip) = f"{methods[call.func.attr][0]}.{call.func.attr}", (methods[call.func.attr][1], 1)
                else:
                    name = call.func.id if isinstance(call.func, ast.Name) else ""
                    name = scope.aliases.get(name, name) if scope else name
                    if name in loaded or name not in defs and name not in inits:
                        return
                    fn, skip = (defs[name], 0) if name in defs else (inits[name], 1)
                seen.setdefault(name, []).append(_bound_args(fn, call, scope, skip))
                seen_types.setdefault(name, []).append(_bound_types(fn, call, scope, skip))
            for tree in trees:
                self.decisions(tree, on_call)
            values: dict[str, dict[str, Any]] = {}
            for name, sites in seen.items():
                first = sites[0]
                agreed = {p: v for p, v in first.items() if v is not _UNKNOWN and all(
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
                for n in _top_level_names(st):
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
        return {n: (defs[0][0], defs[0][1]) for n, defs in found.items()  # type: ignore[misc]
                if len(defs) == 1 and isinstance(defs[0][1], ast.FunctionDef) and n not in other
                and not (n.startswith("__") and n.endswith("__")) and defs[0][1].args.args
                and all(ast.unparse(d) in _PASS_THROUGH_DECORATORS for d in defs[0][1].decorator_list)}

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
            for t, v in _pairs(st.targets[0], st.value):
                if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
                        and stored.get(t.attr) == 1 and t.attr not in framework):
                    value, kind = scope.stored_value(v), scope.type_of(v)
                    if value is not _UNKNOWN:
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

    def _function_scope(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, outer: _Scope | None,
                        owner_class: str | None) -> _Scope:
        a = fn.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
        cached = self._bound.get(id(fn))
        if cached is None or cached[0] is not fn:  # the node is held, so its id is not reused
            cached = self._bound[id(fn)] = (fn, bound_counts(fn.body))
        stores = cached[1]
        types = {k: v for k, v in (outer.types if outer else {}).items() if k not in stores}
        consts = {k: v for k, v in (outer.consts if outer else self.module_consts).items()
                  if k not in stores and k not in (outer.ranged if outer else ())}
        key = fn.name if outer is None and owner_class is None else (
            (owner_class if fn.name == "__init__" else f"{owner_class}.{fn.name}") if outer is None else None)
        known = self.param_values.get(key, {}) if key else {}
        known_types = self.param_types.get(key, {}) if key else {}
        for i, p in enumerate(params):
            if p is None:
                continue
            types.pop(p.arg, None)
            consts.pop(p.arg, None)
            if stores.get(p.arg):
                continue
            if p.arg in known:
                consts[p.arg] = known[p.arg]
            if isinstance(p.annotation, ast.Name) and (p.annotation.id in self.classes
                                                       or self.attr_types.get(p.annotation.id)):
                types[p.arg] = p.annotation.id  # a config, or a class with config attributes (`spec: RunSpec`)
            elif p.arg in known_types:
                types[p.arg] = known_types[p.arg]
            elif i == 0 and owner_class and p.arg == "self" and all(
                    ast.unparse(d) in _SELF_DECORATORS for d in fn.decorator_list):
                types[p.arg] = owner_class
        scope = _Scope(self, types, consts)
        # Names bound exactly once to a config-typed expression (`m = cfg.model`, `cfg, x = spec.cfg, 1`).
        # A parameter is bound on entry too (code before the assignment reads the argument), and an
        # assignment in a nested function or class binds a name of its own scope: neither counts.
        param_names = {p.arg for p in params if p is not None}
        todo = list(fn.body)
        while todo:
            node = todo.pop(0)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            todo.extend(ast.iter_child_nodes(node))
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                for t, v in _pairs(node.targets[0], node.value):
                    if isinstance(t, ast.Name) and stores.get(t.id) == 1 and t.id not in param_names:
                        kind = scope.type_of(v)
                        if kind:
                            types[t.id] = kind
        scope.aliases = {alias: st.value.id for alias, st in call_aliases(fn).items()}  # type: ignore[attr-defined]
        # Names bound once, by a statement of the body itself, to a known value, and read only
        # after it (straight-line code: every later statement sees that value) are constants.
        # A name bound again later, or read before (a nested function may run any time), is known
        # only over the top-level statements that run between its binding and the next one (for a
        # parameter: from the start): straight-line code, each statement runs once, in order.
        reads, rebound = _reads_and_nonlocals(fn)
        blocked = rebound | {n for node in ast.walk(fn) if isinstance(node, ast.Global) for n in node.names}
        body_stores = [set(bound_counts([st])) for st in fn.body]
        scope.stages = [{} for _ in fn.body]

        def known_from(name: str, value: Any, lo: int) -> None:
            hi = next((j for j in range(lo, len(fn.body)) if name in body_stores[j]), len(fn.body))
            for j in range(lo, hi):
                scope.stages[j][name] = value
            if hi < len(fn.body) and isinstance(fn.body[hi], ast.If) and name not in bound_counts(
                    [ast.Expr(fn.body[hi].test)]):
                scope.test_stages.setdefault(hi, {})[name] = value
        for p in params:
            if p is not None and stores.get(p.arg) and p.arg in known and p.arg not in blocked:
                known_from(p.arg, known[p.arg], 0)
        for i, st in enumerate(fn.body):
            if not ((isinstance(st, ast.Assign) and len(st.targets) == 1)
                    or (isinstance(st, ast.AnnAssign) and st.value is not None and st.simple)):
                continue
            here = scope.at(i)
            target = st.targets[0] if isinstance(st, ast.Assign) else st.target
            for t, v in _pairs(target, st.value):  # type: ignore[arg-type]
                value = here.stored_value(v)
                if not isinstance(t, ast.Name) or t.id in blocked or value is _UNKNOWN:
                    continue
                if (stores.get(t.id) == 1 and t.id not in param_names
                        and all(at > (st.end_lineno, st.end_col_offset) for at in reads.get(t.id, []))):
                    scope.consts[t.id] = value  # bound once, read only after: known for good
                else:
                    known_from(t.id, value, i + 1)
        return scope

    def decisions(self, tree: ast.Module,
                  on_call: Callable[[ast.Call, _Scope | None], None] | None = None
                  ) -> list[tuple[ast.AST, bool, list[ast.stmt] | None]]:
        """(If or IfExp node, its test's truth, the statement list holding it) for every decided
        test, and (BoolOp node, the indices of the operands it keeps, None) for every `and` / `or`
        with operands known not to matter; `on_call` sees every call with the scope it runs in."""
        found: list[tuple[ast.AST, Any, list[ast.stmt] | None]] = []
        tests: set[int] = set()  # expressions whose truth alone is used (`if` tests, their operands)

        def walk_body(body: list[ast.stmt], scope: _Scope | None, owner_class: str | None) -> None:
            for st in body:
                visit(st, scope, owner_class, body)

        def visit(node: ast.AST, scope: _Scope | None, owner_class: str | None, holder: list | None,
                  test_scope: _Scope | None = None) -> None:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # Decorators and defaults run where the function is defined (calls there count).
                for d in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
                    if d is not None:
                        visit(d, scope, None, None)
                inner = self._function_scope(node, scope, owner_class)
                for i, st in enumerate(node.body):
                    visit(st, inner.at(i), None, node.body, inner.at(i + 0.5))
                return
            if isinstance(node, ast.ClassDef):
                for d in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
                    visit(d, scope, None, None)
                walk_body(node.body, None, node.name)
                return
            if isinstance(node, ast.Lambda) and scope is not None:
                a = node.args
                scope = scope.lasting({p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if p})
            elif isinstance(node, ast.GeneratorExp) and scope is not None:
                scope = scope.lasting()  # runs as it is consumed, maybe after a name changes
            if on_call is not None and isinstance(node, ast.Call):
                on_call(node, scope)
            if isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)):
                tests.add(id(node.test))
            elif isinstance(node, ast.comprehension):
                tests.update(id(c) for c in node.ifs)
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
                tests.add(id(node.operand))
            elif isinstance(node, ast.BoolOp) and id(node) in tests:
                tests.update(id(v) for v in node.values)
            if scope is not None and isinstance(node, (ast.If, ast.IfExp)):
                t = (test_scope if isinstance(node, ast.If) and test_scope else scope).truth(node.test)
                if t is not _UNKNOWN:
                    found.append((node, bool(t), holder))
            elif scope is not None and isinstance(node, ast.BoolOp):
                keep = scope.kept_operands(node, id(node) in tests)
                if keep is not None:
                    found.append((node, keep, None))
            for field, value in ast.iter_fields(node):
                if isinstance(node, ast.If) and field == "test" and test_scope is not None:
                    visit(value, test_scope, None, None)
                elif isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                    walk_body(value, scope, owner_class if isinstance(node, ast.ClassDef) else None)
                elif isinstance(value, list):
                    for v in value:
                        if isinstance(v, ast.AST):
                            visit(v, scope, None, None)
                elif isinstance(value, ast.AST):
                    visit(value, scope, None, None)

        walk_body(tree.body, None, None)
        return found


def _top_level_names(st: ast.stmt) -> list[str]:
    if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [st.name]
    if isinstance(st, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in st.names]
    return [n.id for n in ast.walk(st) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))]


def _reads_and_nonlocals(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[dict[str, list[tuple[int, int]]], set[str]]:
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


def _pairs(target: ast.expr, value: ast.expr) -> list[tuple[ast.expr, ast.expr]]:
    """(target, value) pairs of one assignment: `a, b = x, y` element-wise (no starred item)."""
    if (isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List))
            and len(target.elts) == len(value.elts)
            and not any(isinstance(e, ast.Starred) for e in [*target.elts, *value.elts])):
        return list(zip(target.elts, value.elts))
    return [(target, value)]


def _bound_args(fn: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call, scope: "_Scope | None",
                skip: int = 0) -> dict[str, Any]:
    """Parameter -> the value this call passes (a default when it passes none), or _UNKNOWN;
    `skip` leading parameters the call does not pass (`self` of a constructor)."""
    a = fn.args
    if any(isinstance(x, ast.Starred) for x in call.args) or any(k.arg is None for k in call.keywords):
        return {}
    positional = [*a.posonlyargs, *a.args][skip:]
    out: dict[str, Any] = {}
    defaults = dict(zip([p.arg for p in positional][len(positional) - len(a.defaults):], a.defaults))
    defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
    for p, d in defaults.items():
        out[p] = d.value if isinstance(d, ast.Constant) else _UNKNOWN
    if len(call.args) > len(positional):
        return {}
    for p, x in zip(positional, call.args):
        out[p.arg] = scope.stored_value(x) if scope else (x.value if isinstance(x, ast.Constant) else _UNKNOWN)
    for k in call.keywords:
        out[k.arg] = scope.stored_value(k.value) if scope else (k.value.value if isinstance(k.value, ast.Constant)
                                                                 else _UNKNOWN)
    return out


def _bound_types(fn: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call, scope: "_Scope | None",
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


def freeze_source(src: str, freezer: Freezer, tree: ast.Module | None = None) -> str:
    """`src` with every test the frozen config decides replaced by its taken branch (`tree`: src parsed)."""
    tree = tree if tree is not None else ast.parse(src)
    for _ in range(200):
        found = freezer.decisions(tree)
        if not found:
            return dead_stores_cut(*_parsed(dead_tails_cut(src, tree)), freezer.plain_attr)
        lines = io.StringIO(src).readlines()
        protected = string_lines(tree)
        # One edit per region per pass, innermost last: re-parse and go again.
        found.sort(key=lambda f: (f[0].lineno, -f[0].end_lineno))
        chosen: list[tuple[ast.AST, bool, list | None]] = []
        for item in found:
            node = item[0]
            if not any(o.lineno <= node.lineno and node.end_lineno <= o.end_lineno for o, *_ in chosen):
                chosen.append(item)
        new_src = src
        starts = line_starts(src)
        emptied: set[int] = set()
        for node, take, holder in sorted(chosen, key=lambda f: (f[0].lineno, f[0].col_offset), reverse=True):
            if isinstance(node, ast.BoolOp):
                lo = offset(lines, starts, node.lineno, node.col_offset)
                hi = offset(lines, starts, node.end_lineno, node.end_col_offset)
                parts = []
                for i in take:
                    v = node.values[i]
                    seg = src[offset(lines, starts, v.lineno, v.col_offset):
                              offset(lines, starts, v.end_lineno, v.end_col_offset)]
                    parts.append(f"({seg})" if len(take) == 1 or isinstance(v, _LOOSE) else seg)
                new_src = new_src[:lo] + (" or " if isinstance(node.op, ast.Or) else " and ").join(parts) + new_src[hi:]
                continue
            if isinstance(node, ast.IfExp):
                branch = node.body if take else node.orelse
                seg_lo = offset(lines, starts, branch.lineno, branch.col_offset)
                seg_hi = offset(lines, starts, branch.end_lineno, branch.end_col_offset)
                lo = offset(lines, starts, node.lineno, node.col_offset)
                hi = offset(lines, starts, node.end_lineno, node.end_col_offset)
                new_src = new_src[:lo] + "(" + src[seg_lo:seg_hi] + ")" + new_src[hi:]
                continue
            edit = if_edit(node, take, holder, lines, protected)
            if edit is None or (not edit.new and id(holder) in emptied):
                continue  # two siblings cut in one pass could leave an empty block: the next pass
            emptied.add(id(holder))
            lo, hi = starts[edit.lo - 1], starts[edit.hi]
            new_src = new_src[:lo] + "".join(edit.new) + new_src[hi:]
        if new_src == src:
            return src
        try:
            tree = ast.parse(new_src)
        except SyntaxError as e:
            raise BundleError(f"freezing the config broke the code at line {e.lineno}: {e.msg}; report it and ship "
                              "quant.code_lean=false") from None
        src = new_src
    raise BundleError("freezing the config did not settle after 200 passes; ship quant.code_lean=false and report it")


def _parsed(src: str) -> tuple[str, ast.Module]:
    return src, ast.parse(src)
