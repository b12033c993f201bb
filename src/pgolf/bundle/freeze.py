"""Code specialized to one frozen config: branches its config can never take are cut out of the source.

A lean bundle (`quant.code_lean`) runs exactly the config `pgolf bundle` checked, so an
`if cfg.quant.compressor == "pergroup":` is decided when the bundle is built. This pass reads
each function's config-typed names (parameters annotated with a config class or passed one by
every caller, names bound once to one, attributes a class declares or a constructor stores as
one) and what else is known (bundle.values, bundle.propagate): the parameters every caller
passes the same value, `self.x` a constructor sets once, module-level constants, names
between their bindings, new instances (never None). It decides every `if` / `x if c else y`
whose test reads only those and constants, cuts `and` / `or` operands that cannot matter, and
keeps the taken branch, as text: comments stay, so the readable file is still the code that
runs. Statements after a return and stores the next statement overwrites go too
(bundle.edits). The definitions only a cut branch called are then unreached, and the bundler
drops them.

A field is never frozen when code may see another value at run time: the fields an
environment variable may still set (data paths, run id, seed), any field some shipped code
assigns (`x.field = ...`), passes to `dataclasses.replace` or to a config class's constructor,
and fields holding containers (bundle.fields reads these facts from the code).
"""

import ast
import io
from typing import Any, Callable

from pgolf.bundle.edits import dead_stores_cut, dead_tails_cut, if_edit, line_starts, offset, string_lines
from pgolf.bundle.fields import (assigned_pairs, bound_counts, call_aliases, class_attr_types, config_classes,
                                 exempt_fields, reads_and_nonlocals, top_level_names)
from pgolf.bundle.propagate import CodeFacts
from pgolf.bundle.rules import BundleError
from pgolf.bundle.values import LOOSE, SELF_DECORATORS, UNKNOWN, Scope
from pgolf.config_tree import Config


class Freezer(CodeFacts):
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
        self.top_names = {n for tree in trees for st in tree.body for n in top_level_names(st)}
        # A class's config-typed attribute counts only while no code assigns that name.
        self._noted_types = {c: {a: t for a, t in attrs.items() if a not in self.exempt}
                             for c, attrs in class_attr_types(trees, self.classes).items()}
        self.attr_types = self._noted_types  # and what constructors store (_propagate)
        self._syntax: dict[int, tuple[ast.AST, tuple]] = {}  # id(function) -> (it, what its text says)
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

    def function_syntax(self, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple:
        """(bound_counts of its body, call_aliases, where it reads each name, the names a nested
        function or a `global` may rebind, the names each top-level statement binds), once per node."""
        cached = self._syntax.get(id(fn))
        if cached is None or cached[0] is not fn:  # the node is held, so its id is not reused
            reads, rebound = reads_and_nonlocals(fn)
            blocked = rebound | {n for node in ast.walk(fn) if isinstance(node, ast.Global) for n in node.names}
            cached = self._syntax[id(fn)] = (fn, (bound_counts(fn.body), call_aliases(fn), reads, blocked,
                                                  [set(bound_counts([st])) for st in fn.body]))
        return cached[1]

    def _function_scope(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, outer: Scope | None,
                        owner_class: str | None) -> Scope:
        a = fn.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
        stores, aliases, reads, blocked, body_stores = self.function_syntax(fn)
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
                    ast.unparse(d) in SELF_DECORATORS for d in fn.decorator_list):
                types[p.arg] = owner_class
        scope = Scope(self, types, consts)
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
                for t, v in assigned_pairs(node.targets[0], node.value):
                    if isinstance(t, ast.Name) and stores.get(t.id) == 1 and t.id not in param_names:
                        kind = scope.type_of(v)
                        if kind:
                            types[t.id] = kind
        scope.aliases = {alias: st.value.id for alias, st in aliases.items()}
        # Names bound once, by a statement of the body itself, to a known value, and read only
        # after it (straight-line code: every later statement sees that value) are constants.
        # A name bound again later, or read before (a nested function may run any time), is known
        # only over the top-level statements that run between its binding and the next one (for a
        # parameter: from the start): straight-line code, each statement runs once, in order.
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
            for t, v in assigned_pairs(target, st.value):  # type: ignore[arg-type]
                value = here.stored_value(v)
                if not isinstance(t, ast.Name) or t.id in blocked or value is UNKNOWN:
                    continue
                if (stores.get(t.id) == 1 and t.id not in param_names
                        and all(at > (st.end_lineno, st.end_col_offset) for at in reads.get(t.id, []))):
                    scope.consts[t.id] = value  # bound once, read only after: known for good
                else:
                    known_from(t.id, value, i + 1)
        return scope

    def decisions(self, tree: ast.Module,
                  on_call: Callable[[ast.Call, Scope | None], None] | None = None
                  ) -> list[tuple[ast.AST, bool, list[ast.stmt] | None]]:
        """(If or IfExp node, its test's truth, the statement list holding it) for every decided
        test, and (BoolOp node, the indices of the operands it keeps, None) for every `and` / `or`
        with operands known not to matter; `on_call` sees every call with the scope it runs in."""
        found: list[tuple[ast.AST, Any, list[ast.stmt] | None]] = []
        tests: set[int] = set()  # expressions whose truth alone is used (`if` tests, their operands)

        def walk_body(body: list[ast.stmt], scope: Scope | None, owner_class: str | None) -> None:
            for st in body:
                visit(st, scope, owner_class, body)

        def visit(node: ast.AST, scope: Scope | None, owner_class: str | None, holder: list | None,
                  test_scope: Scope | None = None) -> None:
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
                if t is not UNKNOWN:
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
                    parts.append(f"({seg})" if len(take) == 1 or isinstance(v, LOOSE) else seg)
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
