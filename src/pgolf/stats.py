"""`pgolf stats`: is a gain real? One-sided Welch (or one-sample) t-tests over seeds,
against the challenge's rule of beating the record by >= 0.005 nats at p < 0.01.

The t distribution comes from scipy (a well-kept implementation; this command is never
part of a bundled train_gpt.py, so the dependency costs a record nothing).
"""

import json
import math
import os
from pathlib import Path
from typing import Any

from pgolf.errors import PgolfError
from pgolf.runfolder import RUN_METRICS


class StatsError(PgolfError, ValueError):
    """Runs or settings a significance test cannot use; the message names the fix."""


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` (possibly fractional) degrees of freedom."""
    from scipy.stats import t as student_t  # lazy: only `pgolf stats` needs scipy
    if not df > 0:
        raise StatsError(f"degrees of freedom must be positive, got {df}")
    return float(student_t.sf(t, df))


def _summary(values: list[float], label: str) -> dict[str, Any]:
    vals = [float(v) for v in values]
    if any(not math.isfinite(v) for v in vals):
        raise StatsError(f"{label} values must be finite numbers, got {vals}")
    n = len(vals)
    mean = sum(vals) / n if n else float("nan")
    var = sum((v - mean) ** 2 for v in vals) / (n - 1) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "std": math.sqrt(var) if n > 1 else float("nan"), "var": var, "values": vals}


def _need_two(s: dict[str, Any], label: str, hint: str) -> None:
    if s["n"] < 2:
        raise StatsError(f"{label} has {s['n']} run(s); a t-test needs at least 2 (usually 3 seeds){hint}")


def _t_test(new: dict[str, Any], old: dict[str, Any] | None, old_value: float | None,
                   min_delta: float) -> dict[str, Any]:
    if old is None:
        delta = float(old_value) - new["mean"]
        se, df, test = math.sqrt(new["var"] / new["n"]), float(new["n"] - 1), "one-sample t"
    else:
        a, b = new["var"] / new["n"], old["var"] / old["n"]
        delta, se, test = old["mean"] - new["mean"], math.sqrt(a + b), "Welch t"
        # Welch-Satterthwaite; identical runs on both sides give 0/0: fall back to the pooled df.
        df = (a + b) ** 2 / (a * a / (new["n"] - 1) + b * b / (old["n"] - 1)) if a + b > 0 else float(
            new["n"] + old["n"] - 2)
    excess = delta - min_delta
    if se > 0:
        t = excess / se
    else:
        t = math.inf if excess > 0 else (-math.inf if excess < 0 else 0.0)
    p = student_t_sf(t, df) if not (t == 0.0 and se == 0) else 1.0
    return {"test": test, "delta": delta, "se": se, "t": t, "df": df, "p_value": p}


def compare_runs(new: list[float], old: list[float] | float, min_delta_nats: float = 0.005,
                 metric: str = "val_loss", alpha: float = 0.01, *, nats_to_metric: float | None = None,
                 new_bpb: list[float] | None = None, old_bpb: list[float] | float | None = None) -> dict[str, Any]:
    """Do `new` runs beat `old` (runs, or one published value) by more than `min_delta_nats`?

    Lower is better. delta = old mean - new mean (an improvement is positive). One-sided test
    of H0: improvement <= margin against H1: improvement > margin: Welch's t-test for two
    groups, a one-sample t-test when `old` is a single number. `significant` is p < alpha.
    The margin is in nats; for metric val_bpb pass `nats_to_metric` (val_bpb / val_loss of
    the runs) to convert it. `new_bpb`/`old_bpb` add the bpb delta to the report.
    """
    if metric not in ("val_loss", "val_bpb"):
        raise StatsError(f"metric must be val_loss or val_bpb, got {metric!r}")
    if not 0.0 < alpha < 1.0:
        raise StatsError(f"alpha must be between 0 and 1, got {alpha}")
    if metric == "val_bpb" and not nats_to_metric:
        raise StatsError("metric val_bpb needs nats_to_metric (val_bpb / val_loss of the runs) to convert the margin")
    scale = 1.0 if metric == "val_loss" else float(nats_to_metric)
    new_s = _summary(new, "new")
    _need_two(new_s, "new", "")
    one_sample = isinstance(old, (int, float))
    old_s = None if one_sample else _summary(old, "old")
    if old_s is not None:
        _need_two(old_s, "old", "; compare against a published value with --against-value instead")
    min_delta = float(min_delta_nats) * scale
    res = _t_test(new_s, old_s, float(old) if one_sample else None, min_delta)
    out = {"metric": metric, "new": new_s, "old": old_s if old_s else {"n": 1, "mean": float(old), "value": float(old)},
           "min_delta": min_delta, "min_delta_nats": float(min_delta_nats), "alpha": float(alpha), **res}
    out["significant"] = bool(res["p_value"] < alpha)
    if new_bpb is not None and old_bpb is not None:
        nb = sum(new_bpb) / len(new_bpb)
        ob = float(old_bpb) if isinstance(old_bpb, (int, float)) else sum(old_bpb) / len(old_bpb)
        out["bpb"] = {"new_mean": nb, "old_mean": ob, "delta": ob - nb}
    return out


# ---------------------------------------------------------------- run collection

def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StatsError(f"{path}: cannot read it as JSON ({e}); pass a run or record folder") from None
    if not isinstance(data, dict):
        raise StatsError(f"{path}: expected a JSON object; pass a run or record folder")
    return data


def collect_runs(paths: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """One dict per run: metrics.json of a run folder, submission.json of a record folder, or a .json file."""
    runs = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            src = next((p / f for f in (RUN_METRICS, "submission.json") if (p / f).is_file()), None)
            if src is None:
                raise StatsError(f"{p}: no metrics.json or submission.json; pass a finished run or record folder")
        elif p.is_file():
            src = p
        else:
            raise StatsError(f"{p}: not found; pass a run folder, a record folder or a metrics JSON file")
        data = _load_json(src)
        if not any(isinstance(data.get(k), (int, float)) for k in ("val_loss", "val_bpb")):
            raise StatsError(f"{src}: holds neither val_loss nor val_bpb; the run did not finish")
        keep = ("val_loss", "val_bpb", "seed", "eval_mode", "legal", "config_hash", "steps", "device")
        runs.append({"path": str(src), **{k: data.get(k) for k in keep}})
    return runs


def runs_metric(runs: list[dict[str, Any]], metric: str) -> list[float]:
    """The `metric` of each run, failing with the run's path when one lacks it."""
    bad = [r["path"] for r in runs if not isinstance(r.get(metric), (int, float))]
    if bad:
        raise StatsError(f"{bad[0]}: has no {metric}; choose --metric val_loss or val_bpb")
    return [float(r[metric]) for r in runs]


def runs_warnings(runs: list[dict[str, Any]], label: str) -> list[str]:
    """Reasons a group of runs may not be independent repeats of one setup."""
    out = []
    modes = sorted({str(r.get("eval_mode")) for r in runs})
    if len(modes) > 1:
        out.append(f"{label} runs mix eval modes ({', '.join(modes)}); compare like with like")
    seeds = [r.get("seed") for r in runs if r.get("seed") is not None]
    if len(seeds) != len(set(seeds)):
        out.append(f"{label} runs repeat a seed ({seeds}); repeats of one seed are not independent samples")
    if any(r.get("legal") is False for r in runs):
        out.append(f"{label} runs include an eval that is not legal; such a number cannot be a record")
    return out


def stats_report_text(res: dict[str, Any], warnings: list[str] | None = None) -> str:
    """The table and verdict `pgolf stats` prints (warnings default to res["warnings"])."""
    warnings = res.get("warnings", []) if warnings is None else warnings
    unit = "nats" if res["metric"] == "val_loss" else "bpb"
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"  # noqa: E731
    lines = [f"metric: {res['metric']} ({unit}, lower is better)",
             f"{'group':<6} {'n':>3} {'mean':>10} {'std':>10}  values"]
    for label in ("new", "old"):
        g = res[label]
        vals = " ".join(f"{v:.5f}" for v in g.get("values", [g["mean"]]))
        lines.append(f"{label:<6} {g['n']:>3} {fmt(g['mean']):>10} {fmt(g.get('std')):>10}  {vals}")
    lines.append(f"improvement (old - new): {res['delta']:+.6f} {unit}; required > {res['min_delta']:.6f} {unit}"
                 + (f" ({res['min_delta_nats']} nats)" if unit != "nats" else ""))
    if "bpb" in res:
        lines.append(f"bpb: new {res['bpb']['new_mean']:.6f} old {res['bpb']['old_mean']:.6f} "
                     f"improvement {res['bpb']['delta']:+.6f}")
    lines.append(f"{res['test']}: t = {res['t']:.3f}, df = {res['df']:.2f}, one-sided p = {res['p_value']:.3g}")
    word = "SIGNIFICANT" if res["significant"] else "not significant"
    lines.append(f"verdict: {word} at alpha {res['alpha']} (H1: improvement > {res['min_delta']:.6f} {unit})")
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines)


def _nats_ratio(runs: list[dict[str, Any]]) -> float | None:
    """Mean val_bpb / val_loss of the runs holding both (a constant of the tokenizer and val set)."""
    num = (int, float)
    both = [r for r in runs if isinstance(r.get("val_loss"), num) and isinstance(r.get("val_bpb"), num)
            and r["val_loss"] > 0]
    return sum(r["val_bpb"] / r["val_loss"] for r in both) / len(both) if both else None


def stats_for_runs(new_paths: list[str], against: list[str] | None = None, against_value: float | None = None,
                   metric: str = "val_loss", min_delta_nats: float = 0.005, alpha: float = 0.01) -> dict[str, Any]:
    """`compare_runs` on run/record folders, plus the bpb delta and `warnings` about the runs."""
    if (against is None) == (against_value is None):
        raise StatsError("pass exactly one of --against OLD_RUN... or --against-value NUMBER")
    new = collect_runs(new_paths)
    old = collect_runs(against) if against else []
    warnings = runs_warnings(new, "new") + runs_warnings(old, "old")
    modes = [sorted({str(r.get("eval_mode")) for r in group}) for group in (new, old)]
    if old and modes[0] != modes[1]:
        warnings.append(f"new runs use eval mode {', '.join(modes[0])} but old runs {', '.join(modes[1])}")
    ratio = _nats_ratio(new + old)
    if metric == "val_bpb" and ratio is None:
        raise StatsError("--metric val_bpb needs runs holding both val_loss and val_bpb to convert the nats margin")
    extra: dict[str, Any] = {}
    if metric == "val_loss" and old and all(isinstance(r.get("val_bpb"), (int, float)) for r in new + old):
        extra = {"new_bpb": runs_metric(new, "val_bpb"), "old_bpb": runs_metric(old, "val_bpb")}
    res = compare_runs(runs_metric(new, metric), runs_metric(old, metric) if old else float(against_value),
                       min_delta_nats, metric, alpha, nats_to_metric=ratio, **extra)
    res["warnings"] = warnings
    res["runs"] = {"new": [r["path"] for r in new], "old": [r["path"] for r in old]}
    return res
