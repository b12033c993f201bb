"""Joining modules into one namespace: private names renamed apart, unreached definitions dropped.

Once pasted together, every module shares one global namespace. Private `_names` may
repeat across modules, so each repeated one gets its module's name as a suffix. Then only
the top-level definitions reachable from the main call are kept (a record run never
executes the others, and every kept byte is a byte the model cannot use). The package
imports names only as `from pgolf.x import Name` and never looks globals up by string
(no `globals()`), so the names a statement mentions are exactly the ones it can reach.
"""

import ast
import io
import tokenize
from typing import Callable

from pgolf.bundle.rules import DEF_NODES, BundleError, is_pgolf, is_private, module_path, target_names


def defined_names(node: ast.stmt) -> list[str]:
    """Top-level names a definition or assignment binds (imports excluded)."""
    if isinstance(node, DEF_NODES):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        found: list[str] = []
        for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
            found += target_names(t) or []
        return found
    return []


def rename_plan(trees: dict[str, ast.Module]) -> dict[str, dict[str, str]]:
    """Per module, old -> new name for each private name defined in more than one module.

    Importers of a renamed name get the same mapping, so `from pgolf.x import _y` still works.
    """
    owners: dict[str, list[str]] = {}
    taken: set[str] = set()
    for mod, tree in trees.items():
        for node in tree.body:
            for n in defined_names(node):
                taken.add(n)
                if is_private(n) and mod not in owners.setdefault(n, []):
                    owners[n].append(mod)
    plan: dict[str, dict[str, str]] = {mod: {} for mod in trees}
    for n in sorted(owners):
        if len(owners[n]) < 2:
            continue
        for mod in owners[n]:
            new = f"{n}_{mod.rsplit('.', 1)[-1]}"
            k = 2
            while new in taken:
                new, k = f"{n}_{mod.rsplit('.', 1)[-1]}{k}", k + 1
            taken.add(new)
            plan[mod][n] = new
    for mod, tree in trees.items():
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and is_pgolf(node.module) and node.module in plan:
                for a in node.names:
                    if a.name in plan[node.module]:
                        plan[mod][a.name] = plan[node.module][a.name]
    return plan


def rename_names(name: str, src: str, mapping: dict[str, str]) -> str:
    """`src` with every name token in `mapping` replaced, except attributes (`x._old` stays)."""
    if not mapping:
        return src
    lines = src.splitlines(keepends=True)
    edits: list[tuple[int, int, int, str]] = []
    prev = None
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.NAME and tok.string in mapping and not (prev and prev.string == "."):
            edits.append((tok.start[0], tok.start[1], tok.end[1], mapping[tok.string]))
        if tok.type not in (tokenize.NL, tokenize.COMMENT):
            prev = tok
    for row, lo, hi, new in sorted(edits, reverse=True):
        lines[row - 1] = lines[row - 1][:lo] + new + lines[row - 1][hi:]
    out = "".join(lines)
    left = {n.id for n in ast.walk(ast.parse(out)) if isinstance(n, ast.Name) and n.id in mapping}
    if left:
        # Python 3.11 tokenizes an f-string as one token, so names inside it were not renamed.
        raise BundleError(f"{module_path(name)}: cannot rename private `{sorted(left)[0]}` (used inside an "
                          f"f-string?); give it a name no other bundled module uses")
    return out


def reachable(trees: dict[str, ast.Module], roots: set[str],
              cut: frozenset[str] = frozenset()) -> tuple[dict[str, set[int]], set[str]]:
    """Per module, indices of the top-level statements reachable from the names in `roots`,
    and the names in `cut` that kept code mentions (their definitions are not followed)."""
    where: dict[str, list[tuple[str, int]]] = {}
    for mod, tree in trees.items():
        for i, node in enumerate(tree.body):
            for n in defined_names(node):
                where.setdefault(n, []).append((mod, i))
    keep: dict[str, set[int]] = {mod: set() for mod in trees}
    todo, seen, reached_cut = sorted(roots), set(), set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in cut:
            reached_cut.add(n)
            continue
        for mod, i in where.get(n, []):
            if i not in keep[mod]:
                keep[mod].add(i)
                node = trees[mod].body[i]
                todo += [x.id for x in ast.walk(node) if isinstance(x, ast.Name)]
    return keep, reached_cut


def names_used_at_import(tree: ast.Module, keep: set[int]) -> set[str]:
    """Names the kept statements read while the module is imported (outside function bodies)."""
    found: set[str] = set()
    todo: list[ast.AST] = [tree.body[i] for i in sorted(keep)]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo += [*getattr(node, "decorator_list", []), *node.args.defaults, *node.args.kw_defaults]
            todo += [node.returns] if getattr(node, "returns", None) else []
            todo += [a.annotation for a in [*node.args.args, *node.args.kwonlyargs] if a.annotation]
            continue
        if isinstance(node, ast.Name):
            found.add(node.id)
        todo += [c for c in ast.iter_child_nodes(node) if c is not None]
    return found


def dropped_lines(tree: ast.Module, lines: list[str], keep: set[int]) -> set[int]:
    """1-based lines of the unreached definitions, with the comment lines just above each."""
    drop: set[int] = set()
    for i, node in enumerate(tree.body):
        if i in keep or not defined_names(node):
            continue
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        while first > 1 and lines[first - 2].startswith("#"):
            first -= 1
        drop.update(range(first, (node.end_lineno or node.lineno) + 1))
    return drop


def unused_methods(trees: dict[str, ast.Module], keep: dict[str, set[int]],
                   external_attrs: Callable[[ast.expr], set[str] | None]) -> dict[str, list[ast.stmt]]:
    """Per module, the methods of kept classes that no kept code can call.

    A method is kept when its name appears anywhere in kept code (as an attribute, a name, a
    keyword or a string: `getattr(model, "token_nll")` counts), when it is a dunder, or when a
    base class from outside the bundle has an attribute of that name (a framework calls it:
    `forward`, `backward`, `step`). `external_attrs(base)` gives such a base's attribute names, or
    None when the base cannot be resolved: then every method of the class stays.
    """
    kept = [trees[m].body[i] for m in trees for i in keep[m]]
    classes = {node.name: node for node in kept if isinstance(node, ast.ClassDef)}
    methods = {id(st) for c in classes.values() for st in c.body if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef))}
    # What kept code mentions; a method's mentions of its own name (recursion) do not count.
    refs: set[str] = set()
    stack: list[tuple[ast.AST, str]] = [(node, "") for node in kept]
    while stack:
        node, own = stack.pop()
        if id(node) in methods:
            own = node.name  # type: ignore[attr-defined]
        name = (node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name)
                else node.arg if isinstance(node, ast.keyword) else node.value
                if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
        if name and name != own:
            refs.add(name)
        stack += [(child, own) for child in ast.iter_child_nodes(node)]

    def framework_names(cls: ast.ClassDef, seen: frozenset[str] = frozenset()) -> set[str] | None:
        names: set[str] = set()
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in classes and base.id not in seen:
                inner = framework_names(classes[base.id], seen | {cls.name})
            elif isinstance(base, ast.Name) and base.id == "object":
                inner = set()
            else:
                inner = external_attrs(base)
            if inner is None:
                return None
            names |= inner
        return names

    out: dict[str, list[ast.stmt]] = {m: [] for m in trees}
    for m in trees:
        for i in sorted(keep[m]):
            cls = trees[m].body[i]
            if not isinstance(cls, ast.ClassDef) or cls.keywords:
                continue
            framework = framework_names(cls)
            if framework is None:
                continue
            dead = [st for st in cls.body if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and not (st.name.startswith("__") and st.name.endswith("__"))
                    and st.name not in framework and st.name not in refs]
            if len(dead) < len(cls.body):  # a class body never ends up empty
                out[m] += dead
    return out
