"""What an expression is worth under a frozen config (bundle.freeze): a constant, a config field
read through a config-typed name, a name its scope knows, `self.x` a constructor sets, a new
instance of a plain class; else UNKNOWN. Facts only: deciding and cutting is bundle.freeze's."""

import ast
import dataclasses
from typing import Any

from pgolf.bundle.fields import ANY_FIELD

UNKNOWN = object()


class Instance:
    """A new instance of a class of the code (`ShardSpanStream(files, bos)`): never None, and
    true when its class defines neither __bool__ nor __len__; nothing else is known of it."""

    def __init__(self, cls: str, truth: Any):
        self.cls, self.truth = cls, truth

    def __eq__(self, other: object) -> bool:  # every call site makes one of the same class
        return isinstance(other, Instance) and other.cls == self.cls

    def __hash__(self) -> int:
        return hash(self.cls)


SHAPE = frozenset({"__class__", "__bool__", "__len__", "__new__"})  # what makes an instance, and its truth


def truth_of(v: Any) -> Any:
    return v.truth if isinstance(v, Instance) else bool(v)
PASS_THROUGH_DECORATORS = frozenset({"torch.no_grad()", "torch.inference_mode()"})
_SCALARS = (bool, int, float, str)
# A method under these still gets its instance as `self` (`property`: the getter does).
SELF_DECORATORS = PASS_THROUGH_DECORATORS | {"property"}


class Scope:
    """The config-typed names of one function body: name -> class name."""

    def __init__(self, freezer: Any, types: dict[str, str], consts: dict[str, Any] | None = None):  # a Freezer
        self.freezer, self.types = freezer, types
        self.consts = consts or {}  # parameters every caller passes the same frozen value
        self.aliases: dict[str, str] = {}  # local name -> the function it names, only ever called
        # Per top-level statement of the body, the names known only there (a parameter before the
        # body rebinds it, a local between two bindings): never seen by nested functions.
        self.stages: list[dict[str, Any]] = []
        self.test_stages: dict[int, dict[str, Any]] = {}
        self.ranged: set[str] = set()

    def at(self, i: float) -> "Scope":
        """The scope of the body's i-th top-level statement (i + 0.5: of that `if` statement's
        test, which runs before the branch that binds a name again)."""
        extra = self.stages[int(i)] if int(i) < len(self.stages) else {}
        if i != int(i):
            extra = {**self.test_stages.get(int(i), {}), **extra}
        if not extra:
            return self
        here = Scope(self.freezer, self.types, {**self.consts, **extra})
        here.aliases, here.ranged = self.aliases, self.ranged | set(extra)
        return here

    def lasting(self, bound: set[str] = frozenset()) -> "Scope":  # type: ignore[assignment]
        """This scope as code that may run later sees it (a lambda, a generator expression):
        without the names known only at this statement, nor the names `bound` there."""
        return Scope(self.freezer, {k: v for k, v in self.types.items() if k not in bound},
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
        """The expression's value under the frozen config, or UNKNOWN."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.consts.get(node.id, UNKNOWN)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = []
            for e in node.elts:
                v = self.value(e.value if isinstance(e, ast.Starred) else e)
                if (v is UNKNOWN or isinstance(v, Instance)
                        or isinstance(e, ast.Starred) and not isinstance(v, (tuple, list))):
                    return UNKNOWN
                items += list(v) if isinstance(e, ast.Starred) else [v]  # (*COMPRESSORS, "pergroup")
            # Each its own type: [1] == (1,) is False, {1, 2} == {2, 1} is True.
            if not isinstance(node, ast.Set):
                return tuple(items) if isinstance(node, ast.Tuple) else items
            try:
                return frozenset(items)
            except TypeError:  # {[1]}: the code raises there
                return UNKNOWN
        if isinstance(node, ast.Attribute):
            owner = self.type_of(node.value)
            if node.attr in self.freezer.self_values.get(owner or "", {}):
                return self.freezer.self_values[owner][node.attr]  # type: ignore[index]
            path = self.freezer.classes.get(owner or "")
            if path is None or node.attr in self.freezer.exempt or ANY_FIELD in self.freezer.exempt:
                return UNKNOWN
            sec = self.freezer.cfg
            for p in path:
                sec = getattr(sec, p)
            if not dataclasses.is_dataclass(sec) or node.attr not in {f.name for f in dataclasses.fields(sec)}:
                return UNKNOWN
            v = getattr(sec, node.attr)
            return v if v is None or isinstance(v, _SCALARS) else UNKNOWN
        if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
            seq, i = self.value(node.value), self.value(node.slice)
            if isinstance(seq, tuple) and type(i) is int and -len(seq) <= i < len(seq):
                return seq[i]
            return UNKNOWN
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            t = self.truth(node.operand)
            return UNKNOWN if t is UNKNOWN else not t
        if isinstance(node, ast.Compare):
            left = self.value(node.left)
            rights = [self.value(c) for c in node.comparators]
            if left is UNKNOWN or any(r is UNKNOWN for r in rights):
                return UNKNOWN
            if any(isinstance(v, Instance) for v in (left, *rights)) and not all(
                    isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
                return UNKNOWN  # its class may define ==, <, in
            for op, right in zip(node.ops, rights):
                try:
                    ok = _COMPARE[type(op)](left, right)
                except (TypeError, KeyError):
                    return UNKNOWN
                if not ok:
                    return False
                left = right
            return True
        if isinstance(node, ast.BoolOp):  # the operand that settles it, as `and` / `or` return it
            for i, operand in enumerate(node.values):
                v = self.value(operand)
                if v is UNKNOWN or i == len(node.values) - 1:
                    return v
                t = truth_of(v)
                if t is UNKNOWN or t is isinstance(node.op, ast.Or):
                    return v if t is not UNKNOWN else UNKNOWN
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in self.freezer.plain_classes):
            return self.freezer.plain_classes[node.func.id]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                and not node.keywords and len(node.args) in (2, 3) and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str) and "getattr" not in self.freezer.top_names):
            # `getattr(qcfg, "field", default)` on a config-typed name: that field, when it has one
            return self.value(ast.Attribute(value=node.args[0], attr=node.args[1].value, ctx=ast.Load()))
        return UNKNOWN

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
        """What a name, attribute or parameter bound to `node` holds for good, or UNKNOWN: a list
        or set display anywhere in it may be the object bound (`x = []`, `x = (a, [])`,
        `x = a or []`), and code may append to it: never a constant."""
        if any(isinstance(n, (ast.List, ast.Set)) for n in ast.walk(node)):
            return UNKNOWN
        return self.value(node)

    def truth(self, node: ast.expr) -> Any:
        """bool(expr) under the frozen config, or UNKNOWN. An `and`/`or` operand is skipped
        only when it calls nothing, so deciding a test never drops a side effect."""
        if not isinstance(node, ast.BoolOp):
            v = self.value(node)
            return UNKNOWN if v is UNKNOWN else truth_of(v)
        decisive = isinstance(node.op, ast.Or)  # the truth value that settles the whole test
        truths = [self.truth(v) for v in node.values]
        for i, t in enumerate(truths):
            if t is decisive and not any(isinstance(n, _EFFECTS) for v in node.values[:i] for n in ast.walk(v)):
                return decisive
        return UNKNOWN if any(t is UNKNOWN for t in truths) else (not decisive)


# What an operand must not hold for a test to skip it: a call, or a binding (`(n := x) and cfg.f`
# binds n even when the test is False; cutting the test would leave n unbound).
_EFFECTS = (ast.Call, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)

# Operands that bind looser than `and` / `or`, or as loose: kept in parentheses.
LOOSE = (ast.BoolOp, ast.IfExp, ast.Lambda, ast.NamedExpr, ast.Yield, ast.YieldFrom)

_COMPARE = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
            ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
            ast.Is: lambda a, b: a is b, ast.IsNot: lambda a, b: a is not b}
