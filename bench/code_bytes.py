"""Where a preset's counted code goes: each bundled module's share of train_gpt.py's bytes.

    PYTHONPATH=src python3 bench/code_bytes.py [--preset record_1855] [--set section.field=value ...]
        [--groups "model=model/*" --groups "infra=run,runfolder,runlog" ...] [--json]

A compressor shares context across modules, so a module's share is measured as what the counted
file loses when that module alone is left out (the rest compressed without it), not as its size
compressed on its own. The shares of several modules do not add up exactly (a tiny module's can
come out a few bytes negative: the compressor's choices shift); `--groups` measures a set of
modules left out together. The file left out of is not runnable: these are sizes, not runs.
"""

import argparse
import fnmatch
import json
import re
import sys

from pgolf.bundle.build import READABLE_NAME, shipped_files
from pgolf.bundle.rules import BUNDLE_MARK
from pgolf.bundle.pack import build_compressed_bundle, minify_source
from pgolf.config import resolve_config, shippable_config

SECTION = re.compile(r"^# ---- (\S+) ----\n", re.M)


def sections(readable: str) -> tuple[str, list[tuple[str, str]]]:
    """The bundle's head and its (module, text) sections, in order."""
    parts = SECTION.split(readable)
    return parts[0], [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]


def counted_without(head: str, parts: list[tuple[str, str]], left_out: set[str], codec: str) -> int:
    """Counted bytes of the bundle without the modules in `left_out`, packed as `pgolf bundle` packs it."""
    text = head + "".join(f"# ---- {m} ----\n{body}" for m, body in parts if m not in left_out)
    small = f"# {BUNDLE_MARK} (minified)\n" + minify_source(text)
    return len(build_compressed_bundle(small, READABLE_NAME, codec).encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="record_1855")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--groups", action="append", default=[], metavar="NAME=MOD,MOD",
                    help="modules (paths under pgolf/ without .py; wildcards: model/*) measured left out together")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
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
    out = {"preset": args.preset, "sets": args.sets, "code_lean": cfg.quant.code_lean, "codec": codec,
           "counted_bytes": official, "modules": rows, "groups": groups}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"preset {args.preset} lean={cfg.quant.code_lean} codec={codec}: train_gpt.py counts {official:,} bytes")
    print(f"{'module':34s} {'minified':>9s} {'share':>7s}")
    for r in rows:
        print(f"{r['module']:34s} {r['minified_bytes']:9,d} {r['counted_share']:7,d}")
    for g in groups:
        print(f"group {g['group']}: {g['counted_share']:,} bytes ({', '.join(g['modules'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
