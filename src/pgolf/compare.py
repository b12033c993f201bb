"""`pgolf compare`: many runs in one table, showing only the config fields that differ.

An ablation is read as "what changed, and what did it buy": each run's folder gives its
config (config.toml, else the log's config lines) and its numbers (metrics.json); the table
keeps the fields whose values are not all equal and sorts by val_bpb. Runs that share a
config except the seed are repeats, and groups of repeats get the Welch test of `pgolf stats`.
"""

import json
import math
from pathlib import Path
from typing import Any

from pgolf.config import config_to_dict
from pgolf.errors import PgolfError
from pgolf.runfolder import RUN_ARTIFACT, RUN_CONFIG, RUN_LOG, RUN_METRICS, open_run, read_metrics
from pgolf.runlog import parse_event
from pgolf.stats import StatsError, stats_for_runs

# Fields that name where or as what a run was written, never how it was trained.
COMPARE_IGNORED = frozenset({"run.out_dir", "run.run_id", "run.trackers", "data.cache_dir"})
COMPARE_SEED_FIELD = "run.seed"
COMPARE_COLUMNS = ("val_bpb", "eval_mode", "legal", "artifact_bytes", "budget_margin", "steps", "train_time_s",
                   "eval_seconds")


class CompareError(PgolfError, ValueError):
    """Runs that cannot be compared (one line naming the folder)."""


def flat_config(sections: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{"section.field": value as the log writes it}: one spelling for TOML and log sources."""
    return {f"{sec}.{k}": str(v).replace(" ", "_") for sec, values in sections.items()
            if isinstance(values, dict) for k, v in values.items()}


def config_from_log(text: str) -> dict[str, dict[str, str]]:
    """The config sections a run logged (`event:config section:S key:value ...`)."""
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if line.startswith("event:config "):
            ev = parse_event(line)
            sec = ev.pop("section", "")
            ev.pop("event", None)
            out[sec] = ev
    return out


def run_config(run: Path) -> dict[str, str]:
    """The flat config of a run folder as the run folder reads it (config.toml, else the
    artifact's), else the config lines of its log (a run that stopped before exporting)."""
    if (run / RUN_CONFIG).is_file() or (run / RUN_ARTIFACT).is_file():
        return flat_config(config_to_dict(open_run(run, needs=()).config))
    if (run / RUN_LOG).is_file():
        return flat_config(config_from_log((run / RUN_LOG).read_text(encoding="utf-8", errors="replace")))
    return {}


def differing_fields(configs: list[dict[str, str]], ignore: frozenset[str] = COMPARE_IGNORED) -> list[str]:
    """Sorted keys whose values are not the same in every config (a missing key counts as a value)."""
    keys = set().union(*configs) if configs else set()
    return sorted(k for k in keys - ignore if len({c.get(k) for c in configs}) > 1)


def _compare_metrics(run: Path) -> dict[str, Any]:
    path = run / RUN_METRICS
    return read_metrics(path) if path.is_file() else {}


def compare_rows(paths: list[str]) -> dict[str, Any]:
    """{"fields": differing fields, "rows": one dict per run sorted by val_bpb, "welch": tests}."""
    runs = []
    for p in paths:
        run = Path(p)
        if not run.is_dir():
            raise CompareError(f"{p}: not a run folder; pass folders written by pgolf train")
        cfg, metrics = run_config(run), _compare_metrics(run)
        if not cfg and not metrics:
            raise CompareError(f"{p}: holds no config.toml, log.txt or metrics.json; pass a pgolf run folder")
        runs.append((run, cfg, metrics))
    fields = differing_fields([c for _, c, _ in runs])
    rows = []
    for run, cfg, metrics in runs:
        row: dict[str, Any] = {"run": run.name or str(run), "path": str(run)}
        row.update({f: cfg.get(f, "-") for f in fields})
        row.update({c: metrics.get(c) for c in COMPARE_COLUMNS})
        row["failed"] = metrics.get("failed")
        rows.append(row)
    rows.sort(key=lambda r: r["val_bpb"] if isinstance(r["val_bpb"], (int, float)) else math.inf)
    return {"fields": fields, "rows": rows, "welch": _compare_welch(runs)}


def seed_groups(runs: list[tuple[Path, dict[str, str], dict[str, Any]]]) -> list[list[Path]]:
    """Runs grouped by their config without the seed; only groups that hold finished repeats."""
    groups: dict[str, list[Path]] = {}
    for run, cfg, metrics in runs:
        if isinstance(metrics.get("val_loss"), (int, float)) and not metrics.get("failed"):
            key = json.dumps({k: v for k, v in cfg.items() if k not in COMPARE_IGNORED | {COMPARE_SEED_FIELD}},
                             sort_keys=True)
            groups.setdefault(key, []).append(run)
    return [g for g in groups.values() if len(g) >= 2]


def _compare_welch(runs: list[tuple[Path, dict[str, str], dict[str, Any]]]) -> list[dict[str, Any]]:
    """The best group of repeats (lowest mean val_loss) tested against every other group."""
    groups = seed_groups(runs)
    if len(groups) < 2:
        return []
    metric = {run: m["val_loss"] for run, _, m in runs if isinstance(m.get("val_loss"), (int, float))}
    groups.sort(key=lambda g: sum(metric[r] for r in g) / len(g))
    best, out = groups[0], []
    for other in groups[1:]:
        try:
            res = stats_for_runs([str(r) for r in best], [str(r) for r in other])
        except StatsError as e:
            out.append({"new": [r.name for r in best], "old": [r.name for r in other], "error": str(e)})
            continue
        out.append({"new": [r.name for r in best], "old": [r.name for r in other], "delta": res["delta"],
                    "t": res["t"], "df": res["df"], "p_value": res["p_value"], "significant": res["significant"],
                    "min_delta": res["min_delta"], "warnings": res["warnings"]})
    return out


def _compare_cell(v: Any, col: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6f}" if col in ("val_bpb",) else f"{v:.1f}"
    if isinstance(v, int) and col in ("artifact_bytes", "budget_margin"):
        return f"{v:,}"
    return str(v)


def compare_text(res: dict[str, Any]) -> str:
    """The aligned table (and any Welch tests) that `pgolf compare` prints."""
    heads = {"budget_margin": "margin", "train_time_s": "train_s", "eval_seconds": "eval_s", "artifact_bytes": "bytes"}
    cols = ["run", *res["fields"], *COMPARE_COLUMNS]
    table = [[heads.get(c, c) for c in cols]]
    for r in res["rows"]:
        cells = [_compare_cell(r.get(c), c) for c in cols]
        if r.get("failed"):
            cells[0] += " (failed)"
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    if not res["fields"]:
        lines.append("(the runs share every config field)")
    for w in res["welch"]:
        head = f"Welch t: {', '.join(w['new'])} vs {', '.join(w['old'])}: "
        if "error" in w:
            lines.append(head + w["error"])
            continue
        word = "SIGNIFICANT" if w["significant"] else "not significant"
        lines.append(head + f"improvement {w['delta']:+.6f} nats (required > {w['min_delta']:.6f}), "
                            f"t = {w['t']:.3f}, df = {w['df']:.2f}, p = {w['p_value']:.3g}: {word}")
        lines += [f"  warning: {x}" for x in w["warnings"]]
    return "\n".join(lines)
