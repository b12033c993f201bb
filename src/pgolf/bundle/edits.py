"""Text edits of bundle.freeze: keep one branch of an `if`, cut statements that can never run or
whose effect is always overwritten. Comments and layout stay."""

import ast
import io
from typing import Callable


def line_starts(text: str) -> list[int]:
    starts, pos = [0], 0
    for line in io.StringIO(text).readlines():
        pos += len(line)
        starts.append(pos)
    return starts


def offset(lines: list[str], starts: list[int], lineno: int, col: int) -> int:
    """String index of an AST (line, UTF-8 byte column) position."""
    return starts[lineno - 1] + len(lines[lineno - 1].encode("utf-8")[:col].decode("utf-8"))


def string_lines(tree: ast.AST) -> set[int]:
    """Lines inside multi-line string literals, whose text must never be touched."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Constant, ast.JoinedStr)) and node.end_lineno and node.end_lineno > node.lineno:
            inside.update(range(node.lineno + 1, node.end_lineno + 1))
    return inside


class _Edit:
    """Replace lines [lo, hi] (1-based, inclusive) by `new` (a list of lines)."""

    def __init__(self, lo: int, hi: int, new: list[str]):
        self.lo, self.hi, self.new = lo, hi, new


def _dedent(lines: list[str], lo: int, hi: int, by: int, protected: set[int]) -> list[str]:
    out = []
    for i in range(lo, hi + 1):
        line = lines[i - 1]
        if i not in protected and line[:by].strip() == "" and len(line) > by:
            line = line[by:]
        out.append(line)
    return out


def _first_line(st: ast.stmt) -> int:
    """The line `st` starts on: a decorated definition's lineno is its `def` line, after the decorators."""
    return min([st.lineno] + [d.lineno for d in getattr(st, "decorator_list", [])])


def _kept_from(lines: list[str], st: ast.stmt, header: int) -> int:
    """The first line of a kept block: `st`'s, or the comments right above it (below the block's
    header, line `header`), which say why the block is there."""
    first = _first_line(st)
    while first - 1 > header and lines[first - 2].lstrip().startswith("#"):
        first -= 1
    return first


def if_edit(node: ast.If, take: bool, holder: list[ast.stmt] | None, lines: list[str],
             protected: set[int]) -> _Edit | None:
    body, orelse = node.body, node.orelse
    if lines[body[0].lineno - 1].encode("utf-8")[:body[0].col_offset].strip():
        return None  # `if x: y`, the header maybe over several lines (`if (a or\n b): y`)
    head = lines[node.lineno - 1]
    indent = head[:len(head) - len(head.lstrip())]
    is_elif = head.lstrip().startswith("elif")
    else_line = None
    if orelse and not (isinstance(orelse[0], ast.If) and lines[orelse[0].lineno - 1].lstrip().startswith("elif")):
        else_line = next((i for i in range(_first_line(orelse[0]) - 1, body[-1].end_lineno, -1)
                          if lines[i - 1].lstrip().startswith("else")), None)
        if else_line is None or lines[else_line - 1].rstrip().rstrip(":").strip() != "else":
            return None  # `else: x` on one line
    if is_elif:
        if take:
            kept = lines[_kept_from(lines, body[0], node.test.end_lineno) - 1:body[-1].end_lineno]
            return _Edit(node.lineno, node.end_lineno, [f"{indent}else:\n"] + kept)
        if not orelse:
            return _Edit(node.lineno, node.end_lineno, [])
        keep_from = else_line or orelse[0].lineno
        return _Edit(node.lineno, node.end_lineno, lines[keep_from - 1:node.end_lineno])
    if take:
        by = body[0].col_offset - node.col_offset
        kept = _dedent(lines, _kept_from(lines, body[0], node.test.end_lineno), body[-1].end_lineno, by, protected)
    elif not orelse:
        kept = []
    elif else_line is None:  # elif: the next test becomes the if
        first = lines[orelse[0].lineno - 1]
        kept = [first.replace("elif", "if", 1)] + lines[orelse[0].lineno:node.end_lineno]
    else:
        by = orelse[0].col_offset - node.col_offset
        kept = _dedent(lines, _kept_from(lines, orelse[0], else_line), node.end_lineno, by, protected)
    if not kept and holder is not None and len(holder) == 1:
        kept = [f"{indent}pass\n"]
    return _Edit(node.lineno, node.end_lineno, kept)


_TERMINAL = (ast.Return, ast.Raise, ast.Continue, ast.Break)


def dead_tails_cut(src: str, tree: ast.Module) -> str:
    """`src` without the statements that follow a return, raise, continue or break in the same
    block (a kept branch often ends in one: `if numerics == "record": return ...`)."""
    lines = io.StringIO(src).readlines()
    cuts: list[tuple[int, int]] = []
    for node in ast.walk(tree):
        for _, block in ast.iter_fields(node):
            if not (isinstance(block, list) and block and isinstance(block[0], ast.stmt)):
                continue
            end = next((i for i, st in enumerate(block[:-1]) if isinstance(st, _TERMINAL)), None)
            if end is None or block[end + 1].lineno <= block[end].end_lineno:
                continue  # nothing after it, or `return x; y = 1` on one line
            first = min([block[end + 1].lineno] + [d.lineno for d in getattr(block[end + 1], "decorator_list", [])])
            cuts.append((first, block[-1].end_lineno))
    if not cuts:
        return src
    drop = {i for lo, hi in cuts for i in range(lo, hi + 1)}
    return "".join(line for i, line in enumerate(lines, 1) if i not in drop)


def dead_stores_cut(src: str, tree: ast.Module, plain_attr: Callable[[str, str], bool] | None = None) -> str:
    """`src` without each `x = <name or constant>` right before another `x = ...` in the same block
    of a function (what freezing leaves of `x = a if c else b` / `if d: x = e`): the second always
    overwrites it, and nothing can read it in between. Left alone when the second assignment reads
    x, when x is global or nonlocal, or when a nested function or lambda names x (it might run
    while the second value is computed). `self.x = ...` twice in a constructor too, when
    `plain_attr(class, x)` says setting x is a plain store (bundle.freeze) and nothing the second
    value runs can have the object (self not passed, used or captured so far)."""
    lines = io.StringIO(src).readlines()
    drop: set[int] = set()
    for cls in tree.body:
        init = next((st for st in getattr(cls, "body", []) if isinstance(st, ast.FunctionDef)
                     and st.name == "__init__"), None) if isinstance(cls, ast.ClassDef) else None
        if init is None or plain_attr is None or not init.args.args or init.args.args[0].arg != "self":
            continue
        for first, second in zip(init.body, init.body[1:]):
            attr = _self_store(first)
            if (attr and _self_store(second) == attr and plain_attr(cls.name, attr)
                    and isinstance(first.value, (ast.Name, ast.Constant))  # type: ignore[attr-defined]
                    and _self_kept_in(init, second, attr)  # type: ignore[arg-type]
                    and _alone(first, init.body, lines)):
                drop.update(range(first.lineno, first.end_lineno + 1))
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        nested, blocks, todo = set(), [], list(fn.body)
        blocks.append(fn.body)
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                nested |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                continue
            if isinstance(node, (ast.Global, ast.Nonlocal)):
                nested |= set(node.names)
            for _, block in ast.iter_fields(node):
                if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                    blocks.append(block)
            todo += list(ast.iter_child_nodes(node))
        read = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        for block in blocks:
            unread = [st for st in block if _plain_store(st) and _plain_store(st) not in read | nested
                      and isinstance(st.value, (ast.Name, ast.Constant))  # type: ignore[attr-defined]
                      and _alone(st, block, lines)]  # `slot = None` that nothing reads (freezing cut every use)
            for st in unread[:len(block) - 1]:  # a block never ends up empty
                drop.update(range(st.lineno, st.end_lineno + 1))
            for first, second in zip(block, block[1:]):
                name = _plain_store(first)
                if (name and name not in nested and _plain_store(second) == name
                        and isinstance(first.value, (ast.Name, ast.Constant))  # type: ignore[attr-defined]
                        and not any(isinstance(n, ast.Name) and n.id == name
                                    for n in ast.walk(second.value))  # type: ignore[attr-defined]
                        and _alone(first, block, lines)):
                    drop.update(range(first.lineno, first.end_lineno + 1))
    return "".join(line for i, line in enumerate(lines, 1) if i not in drop) if drop else src


def _self_store(st: ast.stmt) -> str | None:
    """x of `self.x = value` (one target), else None."""
    if (isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Attribute)
            and isinstance(st.targets[0].value, ast.Name) and st.targets[0].value.id == "self"):
        return st.targets[0].attr
    return None


def _self_kept_in(init: ast.FunctionDef, upto: ast.Assign, attr: str) -> bool:
    """Whether no code run up to `upto` (included) can have `self`: it is read only as
    `self.x` (no call of a method, no `super()`), no nested function or lambda names it, and the
    value `upto` stores does not read self.attr."""
    nodes = [n for st in init.body[:init.body.index(upto) + 1] for n in ast.walk(st)]
    uses = {id(n.value) for n in nodes if isinstance(n, ast.Attribute)}
    calls = {id(n.func.value) for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    nested = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)) for n in nodes)
    selfs = [n for n in nodes if isinstance(n, ast.Name) and n.id in ("self", "super")]
    reads = [n for n in ast.walk(upto.value) if isinstance(n, ast.Attribute) and n.attr == attr]
    return not nested and not reads and all(id(n) in uses and id(n) not in calls for n in selfs)


def _plain_store(st: ast.stmt) -> str | None:
    """x of `x = value` (one plain name target), else None."""
    if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
        return st.targets[0].id
    return None


def _alone(st: ast.stmt, block: list[ast.stmt], lines: list[str]) -> bool:
    """Whether `st` has its lines to itself (no `a = 1; b = 2`, no `if c: a = 1`)."""
    i = next(k for k, s in enumerate(block) if s is st)
    after = block[i + 1].lineno if i + 1 < len(block) else float("inf")
    starts_line = not lines[st.lineno - 1].encode("utf-8")[:st.col_offset].strip()
    return starts_line and st.end_lineno < after  # type: ignore[operator]
