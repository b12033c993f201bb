"""Record folders for the challenge and the multi-seed statistics that justify a record.

`export_record` turns a finished run folder into what a challenge submission holds:
train_gpt.py (the generated bundle, whose bytes are counted), final_model.ptz, train.log,
submission.json and a README. `compare_runs` tests whether new runs beat old ones by at
least a margin (the challenge's rule: >= 0.005 nats at p < 0.01), with a one-sided Welch
t-test whose Student t tail is computed here (no scipy).
"""

import datetime
import importlib.metadata
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from pgolf.bundle import build_compressed_bundle, bundle_for_config
from pgolf.config import Config, read_config_file, shippable_config
from pgolf.errors import PgolfError
from pgolf.quant.artifact import CHALLENGE_LIMIT_BYTES, budget_report, check_budget, read_artifact_header

RECORD_RUN_FILES = ("metrics.json", "config.toml", "model.ptz", "log.txt")
RECORD_RUN_COMMAND = "torchrun --standalone --nproc_per_node=8 train_gpt.py"
# The challenge repository's layout (data/cached_challenge_fineweb.py writes these paths).
RECORD_DATA_ENV = {"DATA_PATH": "./data/datasets/fineweb10B_sp1024",
                   "TOKENIZER_PATH": "./data/tokenizers/fineweb_1024_bpe.model"}
# Continued-fraction settings of the incomplete beta: converges in a few dozen terms for
# the t statistics seen here; the cap only guards against pathological inputs.
_RECORD_CF_MAX_ITER = 300
_RECORD_CF_EPS = 1e-15
_RECORD_CF_TINY = 1e-300


class RecordError(PgolfError, ValueError):
    """A run folder that cannot be exported, or runs that cannot be compared (one line)."""


# ---------------------------------------------------------------- export

def _record_version() -> str:
    try:
        return importlib.metadata.version("pgolf")
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(sys.modules.get("pgolf"), "__version__", "unknown"))


def _record_check_run(run: Path) -> tuple[dict[str, Any], Config]:
    if not run.is_dir():
        raise RecordError(f"{run}: not a run folder; pass the folder `pgolf train --out` wrote")
    for name in RECORD_RUN_FILES:
        if not (run / name).is_file():
            raise RecordError(f"{run}: missing {name}; export only a finished run (pgolf train ends by writing it)")
    try:
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    except ValueError as e:  # bad JSON, or bytes that are not UTF-8
        raise RecordError(f"{run / 'metrics.json'}: not valid JSON ({e}); re-run pgolf eval or the run") from None
    if metrics.get("failed"):
        raise RecordError(f"{run / 'metrics.json'}: the run failed ({metrics['failed']}); a failed run is "
                          "never exported")
    missing = [k for k in ("val_loss", "val_bpb") if not isinstance(metrics.get(k), (int, float))
               or not math.isfinite(metrics[k])]
    if missing:
        raise RecordError(f"{run / 'metrics.json'}: no {', '.join(missing)}; the run did not finish its evaluation")
    return metrics, read_config_file(run / "config.toml")


def _record_check_out(out: Path) -> None:
    if out.is_symlink():
        raise RecordError(f"{out}: is a symbolic link; pass a real folder path for the record (nothing was changed)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RecordError(f"{out}: exists and is not an empty folder; choose a new --out (nothing was changed)")


def _record_code(cfg: Config, minify: bool, compressed: bool) -> dict[str, str]:
    """File name -> text of the code shipped; train_gpt.py is the counted file."""
    text = bundle_for_config(shippable_config(cfg), "run", minify=minify or cfg.quant.code_form == "minified")
    if not compressed:
        return {"train_gpt.py": text}
    # DESIGN.md section 8: the compressed form is allowed only with the readable source beside it.
    return {"train_gpt.py": build_compressed_bundle(text, "train_gpt_readable.py"), "train_gpt_readable.py": text}


def _record_submission(metrics: dict[str, Any], cfg: Config, report: dict[str, Any], name: str,
                       author: str, limit: int) -> dict[str, Any]:
    return {
        "name": name, "author": author,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "val_loss": metrics["val_loss"], "val_bpb": metrics["val_bpb"],
        "eval_mode": metrics.get("eval_mode", "unknown"), "legal": metrics.get("legal"),
        "bytes_total": report["artifact_bytes"], "bytes_model": report["model_bytes"],
        "bytes_code": report["code_bytes"], "bytes_limit": limit, "bytes_margin": report["margin"],
        "seed": metrics.get("seed", cfg.run.seed), "steps": metrics.get("steps"),
        "train_time_s": metrics.get("train_time_s"), "world_size": metrics.get("world_size"),
        "device": metrics.get("device"), "weights_sha256": metrics.get("weights_sha256"),
        "config_hash": metrics.get("config_hash"), "pgolf_version": _record_version(),
    }


def record_slot_noncausal(eval_mode: str) -> bool:
    """True for eval modes that use the published batch SLOT (fitted on the tokens it scores)."""
    return "+slot" in f"+{eval_mode}" and "causal" not in eval_mode


def _record_verdict(sub: dict[str, Any]) -> str:
    if sub["legal"] is True:
        return "legal (audit passed: causal, scored once, score before update)"
    if sub["legal"] is False:
        return "NOT legal (audit failed or the eval mode is non-causal)"
    return "not audited (eval.audit=false)"


def record_readme(sub: dict[str, Any], compressed: bool) -> str:
    """The README.md of a record folder: the numbers, the verdict, how to reproduce."""
    env = " ".join(f"{k}={v}" for k, v in {**RECORD_DATA_ENV, "SEED": sub["seed"]}.items())
    rows = [("val_bpb", f"{sub['val_bpb']:.6f}"), ("val_loss (nats)", f"{sub['val_loss']:.6f}"),
            ("eval mode", str(sub["eval_mode"])), ("legality", _record_verdict(sub)),
            ("bytes total", f"{sub['bytes_total']:,} (limit {sub['bytes_limit']:,}, margin {sub['bytes_margin']:,})"),
            ("bytes model / code", f"{sub['bytes_model']:,} / {sub['bytes_code']:,}"),
            ("seed", str(sub["seed"])), ("steps", str(sub["steps"])),
            ("train time (s)", "-" if sub["train_time_s"] is None else f"{sub['train_time_s']:.1f}"),
            ("hardware", f"{sub['world_size']} x {sub['device']}"), ("pgolf", sub["pgolf_version"])]
    lines = [f"# {sub['name'] or 'pgolf record'}", ""]
    if sub["author"]:
        lines += [f"Author: {sub['author']}", ""]
    lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    if record_slot_noncausal(str(sub["eval_mode"])):
        lines += ["**Warning:** this evaluation uses batch SLOT as published, which is **non-causal**: its "
                  "delta is fitted on the very tokens it then scores. Use `causal-slot` for a legal number.", ""]
    lines += ["Reproduce (from the challenge repository, with its FineWeb shards downloaded):", "", "```",
              f"{env} {RECORD_RUN_COMMAND}", "```", "",
              "`train_gpt.py` is generated by `pgolf export`; its preset holds this run's config, and the "
              "reference environment variables override it."]
    if compressed:
        lines.append("Here `train_gpt.py` (the counted file) is the self-extracting LZMA form of "
                     "`train_gpt_readable.py`, shipped beside it.")
    return "\n".join(lines) + "\n"


# An absolute or home path anywhere in a line (values, messages with "_" for spaces), but
# not a ratio like step:6/100.
_LOCAL_PATH = re.compile(r"(?<![A-Za-z0-9./~])~?/[^\s:,;]+")


def scrub_local_paths(log: str) -> str:
    """A log fit to publish: every `/abs/path/name` becomes `<local>/name`, so a record
    carries no path of the machine it was trained on."""
    return _LOCAL_PATH.sub(lambda m: "<local>/" + os.path.basename(m.group(0).rstrip("/")), log)


def _record_write(tmp: Path, run: Path, code: dict[str, str], sub: dict[str, Any], readme: str) -> None:
    for fname, text in code.items():
        (tmp / fname).write_text(text, encoding="utf-8", newline="\n")
    shutil.copyfile(run / "model.ptz", tmp / "final_model.ptz")
    log = (run / "log.txt").read_text(encoding="utf-8")
    (tmp / "train.log").write_text(scrub_local_paths(log), encoding="utf-8", newline="\n")
    (tmp / "submission.json").write_text(json.dumps(sub, indent=2) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(readme, encoding="utf-8")
    if (tmp / "final_model.ptz").stat().st_size != sub["bytes_model"]:
        raise RecordError(f"{run / 'model.ptz'} changed while copying; export again")
    header = read_artifact_header(tmp / "final_model.ptz")
    ours, theirs = sub.get("config_hash"), header.get("config_hash")
    if ours and theirs and ours != theirs:
        raise RecordError(f"{run / 'model.ptz'}: config hash {theirs} differs from metrics.json's {ours}; "
                          f"the artifact comes from another run, export the folder that run wrote")


def export_record(run_dir: str | os.PathLike, out_dir: str | os.PathLike, name: str = "", author: str = "",
                  minify: bool = False, compressed: bool = False) -> dict[str, Any]:
    """Write a challenge record folder for a finished run; returns its submission.json content.

    Refuses (RecordError, nothing written) a non-empty `out_dir`, an incomplete run folder or
    a total over the limit (the run's quant.max_artifact_bytes, at most 16,000,000). The
    folder appears whole or not at all: it is built beside `out_dir` and renamed.
    """
    run, out = Path(run_dir), Path(out_dir)
    _record_check_out(out)
    metrics, cfg = _record_check_run(run)
    code = _record_code(cfg, minify, compressed)
    limit = min(int(cfg.quant.max_artifact_bytes), CHALLENGE_LIMIT_BYTES)
    report = budget_report((run / "model.ptz").stat().st_size, len(code["train_gpt.py"].encode("utf-8")), limit)
    check_budget(report, f"of record {out} (from {run})")
    sub = _record_submission(metrics, cfg, report, name, author, limit)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _record_write(tmp, run, code, sub, record_readme(sub, compressed))
        os.chmod(tmp, 0o755)
        # rename() replaces an empty folder atomically and fails on a non-empty one.
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RecordError(f"cannot write record {out}: {e.strerror}; free disk space or choose another --out "
                          "(nothing was written)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sub


# ---------------------------------------------------------------- statistics

def _record_betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _RECORD_CF_TINY else _RECORD_CF_TINY)
    h = d
    for m in range(1, _RECORD_CF_MAX_ITER + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _RECORD_CF_TINY else _RECORD_CF_TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _RECORD_CF_TINY else _RECORD_CF_TINY
            h *= d * c
        if abs(d * c - 1.0) < _RECORD_CF_EPS:
            return h
    raise RecordError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise RecordError(f"incomplete beta needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast only for x < (a+1)/(a+b+2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _record_betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _record_betacf(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` (possibly fractional) degrees of freedom."""
    if not df > 0:
        raise RecordError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def _record_summary(values: list[float], label: str) -> dict[str, Any]:
    vals = [float(v) for v in values]
    if any(not math.isfinite(v) for v in vals):
        raise RecordError(f"{label} values must be finite numbers, got {vals}")
    n = len(vals)
    mean = sum(vals) / n if n else float("nan")
    var = sum((v - mean) ** 2 for v in vals) / (n - 1) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "std": math.sqrt(var) if n > 1 else float("nan"), "var": var, "values": vals}


def _record_need_two(s: dict[str, Any], label: str, hint: str) -> None:
    if s["n"] < 2:
        raise RecordError(f"{label} has {s['n']} run(s); a t-test needs at least 2 (usually 3 seeds){hint}")


def _record_t_test(new: dict[str, Any], old: dict[str, Any] | None, old_value: float | None,
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
        raise RecordError(f"metric must be val_loss or val_bpb, got {metric!r}")
    if not 0.0 < alpha < 1.0:
        raise RecordError(f"alpha must be between 0 and 1, got {alpha}")
    if metric == "val_bpb" and not nats_to_metric:
        raise RecordError("metric val_bpb needs nats_to_metric (val_bpb / val_loss of the runs) to convert the margin")
    scale = 1.0 if metric == "val_loss" else float(nats_to_metric)
    new_s = _record_summary(new, "new")
    _record_need_two(new_s, "new", "")
    one_sample = isinstance(old, (int, float))
    old_s = None if one_sample else _record_summary(old, "old")
    if old_s is not None:
        _record_need_two(old_s, "old", "; compare against a published value with --against-value instead")
    min_delta = float(min_delta_nats) * scale
    res = _record_t_test(new_s, old_s, float(old) if one_sample else None, min_delta)
    out = {"metric": metric, "new": new_s, "old": old_s if old_s else {"n": 1, "mean": float(old), "value": float(old)},
           "min_delta": min_delta, "min_delta_nats": float(min_delta_nats), "alpha": float(alpha), **res}
    out["significant"] = bool(res["p_value"] < alpha)
    if new_bpb is not None and old_bpb is not None:
        nb = sum(new_bpb) / len(new_bpb)
        ob = float(old_bpb) if isinstance(old_bpb, (int, float)) else sum(old_bpb) / len(old_bpb)
        out["bpb"] = {"new_mean": nb, "old_mean": ob, "delta": ob - nb}
    return out


# ---------------------------------------------------------------- run collection

def _record_load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RecordError(f"{path}: cannot read it as JSON ({e}); pass a run or record folder") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path}: expected a JSON object; pass a run or record folder")
    return data


def collect_runs(paths: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """One dict per run: metrics.json of a run folder, submission.json of a record folder, or a .json file."""
    runs = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            src = next((p / f for f in ("metrics.json", "submission.json") if (p / f).is_file()), None)
            if src is None:
                raise RecordError(f"{p}: no metrics.json or submission.json; pass a finished run or record folder")
        elif p.is_file():
            src = p
        else:
            raise RecordError(f"{p}: not found; pass a run folder, a record folder or a metrics JSON file")
        data = _record_load_json(src)
        if not any(isinstance(data.get(k), (int, float)) for k in ("val_loss", "val_bpb")):
            raise RecordError(f"{src}: holds neither val_loss nor val_bpb; the run did not finish")
        keep = ("val_loss", "val_bpb", "seed", "eval_mode", "legal", "config_hash", "steps", "device")
        runs.append({"path": str(src), **{k: data.get(k) for k in keep}})
    return runs


def runs_metric(runs: list[dict[str, Any]], metric: str) -> list[float]:
    """The `metric` of each run, failing with the run's path when one lacks it."""
    bad = [r["path"] for r in runs if not isinstance(r.get(metric), (int, float))]
    if bad:
        raise RecordError(f"{bad[0]}: has no {metric}; choose --metric val_loss or val_bpb")
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


def _record_nats_ratio(runs: list[dict[str, Any]]) -> float | None:
    """Mean val_bpb / val_loss of the runs holding both (a constant of the tokenizer and val set)."""
    num = (int, float)
    both = [r for r in runs if isinstance(r.get("val_loss"), num) and isinstance(r.get("val_bpb"), num)
            and r["val_loss"] > 0]
    return sum(r["val_bpb"] / r["val_loss"] for r in both) / len(both) if both else None


def stats_for_runs(new_paths: list[str], against: list[str] | None = None, against_value: float | None = None,
                   metric: str = "val_loss", min_delta_nats: float = 0.005, alpha: float = 0.01) -> dict[str, Any]:
    """`compare_runs` on run/record folders, plus the bpb delta and `warnings` about the runs."""
    if (against is None) == (against_value is None):
        raise RecordError("pass exactly one of --against OLD_RUN... or --against-value NUMBER")
    new = collect_runs(new_paths)
    old = collect_runs(against) if against else []
    warnings = runs_warnings(new, "new") + runs_warnings(old, "old")
    modes = [sorted({str(r.get("eval_mode")) for r in group}) for group in (new, old)]
    if old and modes[0] != modes[1]:
        warnings.append(f"new runs use eval mode {', '.join(modes[0])} but old runs {', '.join(modes[1])}")
    ratio = _record_nats_ratio(new + old)
    if metric == "val_bpb" and ratio is None:
        raise RecordError("--metric val_bpb needs runs holding both val_loss and val_bpb to convert the nats margin")
    extra: dict[str, Any] = {}
    if metric == "val_loss" and old and all(isinstance(r.get("val_bpb"), (int, float)) for r in new + old):
        extra = {"new_bpb": runs_metric(new, "val_bpb"), "old_bpb": runs_metric(old, "val_bpb")}
    res = compare_runs(runs_metric(new, metric), runs_metric(old, metric) if old else float(against_value),
                       min_delta_nats, metric, alpha, nats_to_metric=ratio, **extra)
    res["warnings"] = warnings
    res["runs"] = {"new": [r["path"] for r in new], "old": [r["path"] for r in old]}
    return res
