"""Where a preset's counted code goes: each bundled module's share of train_gpt.py's bytes.

    PYTHONPATH=src python3 bench/code_bytes.py [--preset record_1855] [--set section.field=value ...]
        [--groups "model=model/*" --groups "infra=run,runfolder,runlog" ...] [--bounds [GROUP]] [--json]

A compressor shares context across modules, so a module's share is measured as what the counted
file loses when that module alone is left out (the rest compressed without it), not as its size
compressed on its own. The shares of several modules do not add up exactly (a tiny module's can
come out a few bytes negative: the compressor's choices shift); `--groups` measures a set of
modules left out together. The file left out of is not runnable: these are sizes, not runs.

`--bounds [GROUP]` asks the other question: how small the counted file gets if the code loses,
one after another (each row includes the ones above it), the text of its error messages, the
checks whose only work is to raise, all f-string text (log lines), and finally (not runnable
at all: python-minifier never renames attributes) every attribute and keyword name over three
characters. With GROUP (a --groups name), that group's modules are left out first. The rows
bound what trimming pgolf's checks, words and names could ever win without writing the
executed code itself differently.
"""

import argparse
import ast
import fnmatch
import json
import re
import string
import sys

from pgolf.bundle.build import READABLE_NAME, shipped_files
from pgolf.bundle.pack import build_compressed_bundle, minify_source
from pgolf.bundle.rules import BUNDLE_MARK
from pgolf.config import resolve_config, shippable_config

SECTION = re.compile(r"^# ---- (\S+) ----\n", re.M)


def sections(readable: str) -> tuple[str, list[tuple[str, str]]]:
    """The bundle's head and its (module, text) sections, in order."""
    parts = SECTION.split(readable)
    return parts[0], [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]


def joined(head: str, parts: list[tuple[str, str]], left_out: set[str] | list[str] = ()) -> str:
    return head + "".join(f"# ---- {m} ----\n{body}" for m, body in parts if m not in left_out)


def counted_bytes(text: str, codec: str) -> int:
    """Counted bytes of a readable bundle text, packed as `pgolf bundle` packs it."""
    small = f"# {BUNDLE_MARK} (minified)\n" + minify_source(text)
    return len(build_compressed_bundle(small, READABLE_NAME, codec).encode("utf-8"))


def counted_without(head: str, parts: list[tuple[str, str]], left_out: set[str], codec: str) -> int:
    """Counted bytes of the bundle without the modules in `left_out`."""
    return counted_bytes(joined(head, parts, left_out), codec)


class _NoMessages(ast.NodeTransformer):
    # raise E(...) -> raise E: the check stays, its words go
    def visit_Raise(self, node: ast.Raise) -> ast.Raise:
        if isinstance(node.exc, ast.Call):
            node.exc = node.exc.func
        return node


class _NoRaisingChecks(ast.NodeTransformer):
    def visit_If(self, node: ast.If) -> ast.AST:
        self.generic_visit(node)
        if not node.orelse and all(isinstance(st, ast.Raise) for st in node.body):
            return ast.Pass()
        return node


class _NoFStrings(ast.NodeTransformer):
    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        return ast.Constant("")


class _ShortAttributes(ast.NodeTransformer):
    # One short name per distinct attribute or keyword: what an attribute-renaming minifier
    # could reach at best (it would have to keep torch's, numpy's and the stdlib's names).
    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def short(self, name: str) -> str:
        if len(name) <= 3:
            return name
        if name not in self.names:
            i, s = len(self.names), ""
            while True:
                s, i = string.ascii_letters[i % 52] + s, i // 52
                if not i:
                    break
            self.names[name] = "A" + s
        return self.names[name]

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        node.attr = self.short(node.attr)
        return node

    def visit_keyword(self, node: ast.keyword) -> ast.AST:
        self.generic_visit(node)
        if node.arg:
            node.arg = self.short(node.arg)
        return node


BOUNDS = (("error messages' text removed", _NoMessages),
          ("checks that only raise removed", _NoRaisingChecks),
          ("f-string text (log lines, messages) removed", _NoFStrings),
          ("attribute and keyword names shortened (not runnable)", _ShortAttributes))


def bounds(text: str, codec: str) -> list[dict]:
    """Counted bytes of `text` after each transform in BOUNDS, cumulatively."""
    rows, tree = [], ast.parse(text)
    for what, transform in BOUNDS:
        tree = ast.fix_missing_locations(transform().visit(tree))
        rows.append({"without": what, "counted_bytes": counted_bytes(ast.unparse(tree), codec)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="record_1855")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--groups", action="append", default=[], metavar="NAME=MOD,MOD",
                    help="modules (paths under pgolf/ without .py; wildcards: model/*) measured left out together")
    ap.add_argument("--bounds", nargs="?", const="", default=None, metavar="GROUP",
                    help="also the counted bytes without message text, raising checks, log text, long attribute "
                         "names (with GROUP, one of the --groups names, left out as well)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.bounds and args.bounds not in [spec.partition("=")[0] for spec in args.groups]:
        print(f"code_bytes.py: --bounds {args.bounds}: no --groups of that name", file=sys.stderr)
        return 2
    cfg = shippable_config(resolve_config(args.preset, None, {}, args.sets)[0])
    codec = cfg.quant.code_codec
    files = shipped_files(cfg, "compressed")  # the counted file and the readable one it unpacks to
    official = len(files["train_gpt.py"].encode("utf-8"))
    head, parts = sections(files[READABLE_NAME])

    def counted(left_out: set[str]) -> int:
        return counted_without(head, parts, left_out, codec)

    total = counted(set())
    if total != official:  # the sections rejoined must be the counted file's source, byte for byte
        print(f"code_bytes.py: rejoined sections count {total:,} bytes, train_gpt.py {official:,}", file=sys.stderr)
        return 1
    rows = [{"module": m, "minified_bytes": len(minify_source(body)),
             "counted_share": total - counted({m})} for m, body in parts]
    rows.sort(key=lambda r: -r["counted_share"])
    groups = []
    for spec in args.groups:
        name, _, mods = spec.partition("=")
        chosen, unknown = set(), []
        for pattern in (m.strip() for m in mods.split(",") if m.strip()):
            hits = {m for m, _ in parts if fnmatch.fnmatchcase(m, f"pgolf/{pattern}.py")}
            chosen |= hits
            unknown += [] if hits else [f"pgolf/{pattern}.py"]
        if unknown:
            print(f"code_bytes.py: --groups {name}: not in this bundle: {', '.join(unknown)}", file=sys.stderr)
            return 2
        groups.append({"group": name, "modules": sorted(chosen),
                       "counted_share": total - counted(chosen)})
    left_out = next((g["modules"] for g in groups if g["group"] == args.bounds), [])
    readable = joined(head, parts, left_out)
    out = {"preset": args.preset, "sets": args.sets, "code_lean": cfg.quant.code_lean, "codec": codec,
           "counted_bytes": official, "modules": rows, "groups": groups, "bounds_left_out": left_out,
           "bounds": bounds(readable, codec) if args.bounds is not None else []}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"preset {args.preset} lean={cfg.quant.code_lean} codec={codec}: train_gpt.py counts {official:,} bytes")
    print(f"{'module':34s} {'minified':>9s} {'share':>7s}")
    for r in rows:
        print(f"{r['module']:34s} {r['minified_bytes']:9,d} {r['counted_share']:7,d}")
    for g in groups:
        print(f"group {g['group']}: {g['counted_share']:,} bytes ({', '.join(g['modules'])})")
    if left_out:
        print(f"bounds with group {args.bounds} left out:")
    for b in out["bounds"]:
        print(f"{b['without']} (and the rows above): {b['counted_bytes']:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
