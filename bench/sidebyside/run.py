"""pgolf's record_1855 beside record #1855's own train_gpt.py, on CPU: one table.

    python bench/sidebyside/run.py --record-script PATH/train_gpt.py [--out results.json] [--only quant,ttt]

PATH is the record folder of a checkout of the public challenge repository
(records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611/);
the script is imported as it is (record_import.py), never copied. Each area module beside this
file compares the record's functions with pgolf's on the same inputs and returns its rows
(quantity, record, pgolf, diff, target, ok). Prints a Markdown table; --out also writes JSON.
"""

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
AREAS = ("optim", "quant", "data", "caseops", "ttt")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record-script", required=True)
    ap.add_argument("--out", default="")
    ap.add_argument("--only", default=",".join(AREAS))
    args = ap.parse_args(argv)
    from record_import import import_record
    rec = import_record(args.record_script)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    print(f"# pgolf {commit} beside {Path(args.record_script).parent.name}/train_gpt.py (CPU)")
    print("| area | quantity | record | pgolf | diff | target | ok |")
    print("|---|---|---|---|---|---|---|")
    out = []
    for area in [a for a in args.only.split(",") if a]:
        t0 = time.perf_counter()
        rows = importlib.import_module(area).rows(rec)
        for r in rows:
            r = {"area": area, **r}
            out.append(r)
            print("| " + " | ".join(_fmt(r.get(k, "")) for k in
                                    ("area", "quantity", "record", "pgolf", "diff", "target", "ok")) + " |",
                  flush=True)
        print(f"<!-- {area}: {time.perf_counter() - t0:.0f} s -->", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"commit": commit, "rows": out}, indent=1) + "\n")
    return 0 if all(r.get("ok") in (True, "info") for r in out) else 1


if __name__ == "__main__":
    sys.exit(main())
