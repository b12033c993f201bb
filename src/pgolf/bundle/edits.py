"""Text edits that keep one branch of an `if`, as bundle.freeze decides: comments and layout stay."""

import ast
import io


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
