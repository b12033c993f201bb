"""Record folders for the challenge: `export_record` turns a finished run folder into what
a submission holds: train_gpt.py (the generated bundle, whose bytes are counted),
final_model.ptz, train.log (without local paths), submission.json and a README.
The statistics that justify a record are in stats.py.
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

from pgolf.bundle.build import shipped_files
from pgolf.config_tree import Config
from pgolf.errors import PgolfError
from pgolf.eval.runner import EvalMode
from pgolf.quant.artifact import (
    CHALLENGE_LIMIT_BYTES,
    budget_report,
    check_budget,
    read_artifact_header,
)
from pgolf.runfolder import (
    RUN_ARTIFACT,
    RUN_CONFIG,
    RUN_LOG,
    RUN_METRICS,
    RUN_PLOTS,
    open_run,
)
from pgolf.runlog import parse_event

RECORD_RUN_FILES = (RUN_METRICS, RUN_CONFIG, RUN_ARTIFACT, RUN_LOG)
# The challenge repository's layout (data/cached_challenge_fineweb.py writes these folders).
RECORD_DATASETS, RECORD_TOKENIZERS = "./data/datasets", "./data/tokenizers"
# The folder names pgolf's embedded corpus takes in its cache (data/corpus.py): its own
# tokenizer, or a given one (named by the digest of its file).
_EMBEDDED_FOLDER = re.compile(r"embedded_(sp\d+|[0-9a-f]{12})")
# Continued-fraction settings of the incomplete beta: converges in a few dozen terms for
# the t statistics seen here; the cap only guards against pathological inputs.


class RecordError(PgolfError, ValueError):
    """A run folder that cannot be exported, or runs that cannot be compared (one line)."""


# ---------------------------------------------------------------- export

def _version() -> str:
    try:
        return importlib.metadata.version("pgolf")
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(sys.modules.get("pgolf"), "__version__", "unknown"))


def _stopped_reason(run: Path) -> str:
    """The log's last `train_stopped` / `run_failed` event as "reason: message", when the run
    has no metrics; "" otherwise."""
    if (run / RUN_METRICS).is_file() or not (run / RUN_LOG).is_file():
        return ""
    last = ""
    with open(run / RUN_LOG, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith(("event:train_stopped ", "event:run_failed ")):
                last = line
    if not last:
        return ""
    ev = parse_event(last.strip())
    return ": ".join(v.replace("_", " ") for v in (ev.get("reason", ""), ev.get("message", "")) if v)


def _check_run(run: Path) -> tuple[dict[str, Any], Config]:
    if not run.is_dir():
        raise RecordError(f"{run}: not a run folder; pass the folder `pgolf train --out` wrote")
    stopped = _stopped_reason(run)
    if stopped:
        raise RecordError(f"{run}: the run stopped before it finished ({stopped}); only a finished run is "
                          "exported: resume it (pgolf train --resume) or train again")
    view = open_run(run, needs=RECORD_RUN_FILES)
    metrics, where = view.metrics, run / RUN_METRICS
    if metrics.get("failed"):
        raise RecordError(f"{where}: the run failed ({metrics['failed']}); a failed run is never exported")
    missing = [k for k in ("val_loss", "val_bpb") if not isinstance(metrics.get(k), (int, float))
               or not math.isfinite(metrics[k])]
    if missing:
        raise RecordError(f"{where}: no {', '.join(missing)}; the run did not finish its evaluation")
    return metrics, view.config


def _check_out(out: Path) -> None:
    if out.is_symlink():
        raise RecordError(f"{out}: is a symbolic link; pass a real folder path for the record (nothing was changed)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RecordError(f"{out}: exists and is not an empty folder; choose a new --out (nothing was changed)")


def _code(cfg: Config, minify: bool, compressed: bool) -> dict[str, str]:
    """File name -> text of the code shipped; train_gpt.py is the counted file (quant.code_form
    unless a flag asks for another form; compressed ships the readable file beside it)."""
    form = "compressed" if compressed else "minified" if minify else cfg.quant.code_form
    return shipped_files(cfg, form)


def _submission(metrics: dict[str, Any], cfg: Config, report: dict[str, Any], name: str,
                       author: str, limit: int) -> dict[str, Any]:
    return {
        "name": name, "author": author,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "val_loss": metrics["val_loss"], "val_bpb": metrics["val_bpb"],
        "eval_mode": metrics.get("eval_mode", "unknown"), "legal": metrics.get("legal"),
        "bytes_total": report["artifact_bytes"], "bytes_model": report["model_bytes"],
        "bytes_code": report["code_bytes"], "bytes_limit": limit, "bytes_margin": report["margin"],
        "seed": metrics.get("seed", cfg.run.seed), "steps": metrics.get("steps"),
        "steps_planned": metrics.get("steps_planned"), "stopped_early": bool(metrics.get("stopped_early")),
        "stop_reason": metrics.get("stop_reason"),
        "train_time_s": metrics.get("train_time_s"), "world_size": metrics.get("world_size"),
        "device": metrics.get("device"), "weights_sha256": metrics.get("weights_sha256"),
        "config_hash": metrics.get("config_hash"), "pgolf_version": _version(),
    }


def record_slot_noncausal(eval_mode: str) -> bool:
    """True for eval modes that use the published batch SLOT (fitted on the tokens it scores)."""
    try:
        return EvalMode.parse(eval_mode).slot == "batch"
    except PgolfError:  # a name from a newer pgolf: judged by its spelling
        return "+slot" in f"+{eval_mode}" and "causal" not in eval_mode


def _verdict(sub: dict[str, Any]) -> str:
    if sub["legal"] is True:
        return "legal (audit passed: causal, scored once, score before update)"
    if sub["legal"] is False:
        return "NOT legal (audit failed or the eval mode is non-causal)"
    return "not audited (eval.audit=false)"


def _launcher(world_size: int) -> str:
    if world_size > 1:
        return f"torchrun --standalone --nproc_per_node={world_size} train_gpt.py"
    return "python train_gpt.py"


def reproduce_steps(metrics: dict[str, Any], cfg: Config) -> tuple[str, list[str]]:
    """(what the commands need, the commands) that train this run again with the shipped
    train_gpt.py: the run's own world size, device and data, named without this machine's
    paths (the preset inside train_gpt.py holds the rest of its config)."""
    world = int(metrics.get("world_size") or 1)
    device = str(metrics.get("device") or "")
    where = str(metrics.get("data_path") or cfg.data.path or "")
    data = os.path.basename(os.path.normpath(where)) if where else ""
    tok = os.path.basename(cfg.data.tokenizer_path) if cfg.data.tokenizer_path else ""
    env = {"SEED": metrics.get("seed", cfg.run.seed)}
    if device == "cpu":  # on a machine with a GPU, run.device=auto would pick it: other numerics
        env["PGOLF_RUN_DEVICE"] = "cpu"
    hardware = f"{world} x {device or 'unknown device'}"
    steps: list[str] = []
    embedded = _EMBEDDED_FOLDER.fullmatch(data)
    if embedded and embedded.group(1) == f"sp{cfg.model.vocab_size}":
        # train_gpt.py looks for this set in pgolf's cache when DATA_PATH is unset.
        if cfg.model.vocab_size == 1024:
            steps.append("pgolf data prepare")
        else:
            steps.append(f"# `pgolf data prepare` makes vocabulary 1024 only: the first `pgolf train --set "
                         f"model.vocab_size={cfg.model.vocab_size}` prepares {data}")
        need = (f"trained on pgolf's embedded Shakespeare corpus ({data}) on {hardware}; `pgolf data prepare` "
                "writes it into pgolf's cache, where train_gpt.py looks when DATA_PATH is unset and there is "
                "no ./data/datasets folder for it")
    elif embedded:
        steps.append(f"pgolf data prepare --tokenizer {tok or 'TOKENIZER.model'}  # prints its data_path")
        env = {"DATA_PATH": "<the data_path it printed>", "TOKENIZER_PATH": tok or "TOKENIZER.model", **env}
        need = (f"trained on pgolf's embedded Shakespeare corpus tokenized with {tok or 'its own tokenizer'} "
                f"on {hardware}")
    elif data.startswith("fineweb"):
        paths = {"DATA_PATH": f"{RECORD_DATASETS}/{data}"}
        if tok:
            paths["TOKENIZER_PATH"] = f"{RECORD_TOKENIZERS}/{tok}"
        env = {**paths, **env}
        need = f"from the challenge repository, with its {data} shards downloaded, on {hardware}"
    elif data:
        env = {"DATA_PATH": f"path/to/{data}", **({"TOKENIZER_PATH": f"path/to/{tok}"} if tok else {}), **env}
        need = f"with the shards this run trained on (its folder: {data}) on {hardware}"
    else:
        need = (f"on {hardware}; the run recorded no data path: train_gpt.py looks in ./data/datasets, "
                "then pgolf's cache")
    steps.append(" ".join(f"{k}={v}" for k, v in env.items()) + " " + _launcher(world))
    return need, steps


def missing_identity(sub: dict[str, Any]) -> list[str]:
    """The submission.json fields a record needs from its author that are empty."""
    return [k for k in ("name", "author") if not str(sub.get(k) or "").strip()]


def stopped_warning(sub: dict[str, Any]) -> str:
    """One line for `pgolf export` when the run made fewer steps than it planned ("" if not)."""
    if not sub.get("stopped_early"):
        return ""
    return (f"warning: the run stopped at step {sub['steps']} of {sub['steps_planned']} ({sub['stop_reason']}); "
            "submission.json and the README say so")


def identity_warning(sub: dict[str, Any]) -> str:
    """One line for `pgolf export` when submission.json lacks its name or author ("" if not)."""
    missing = missing_identity(sub)
    if not missing:
        return ""
    return (f"warning: submission.json has an empty {' and '.join(missing)}: export again with "
            "--name 'RECORD NAME' --author 'YOUR NAME' (or edit submission.json) before submitting")


def record_readme(sub: dict[str, Any], compressed: bool, plots: tuple[str, ...] = (),
                  reproduce: tuple[str, list[str]] | None = None, lean: bool = False) -> str:
    """The README.md of a record folder: the numbers, the verdict, how to reproduce, the plots.
    reproduce: reproduce_steps' (what it needs, commands); lean: train_gpt.py is frozen to its
    config (quant.code_lean)."""
    need, steps = reproduce or ("", [f"SEED={sub['seed']} {_launcher(int(sub.get('world_size') or 1))}"])
    rows = [("val_bpb", f"{sub['val_bpb']:.6f}"), ("val_loss (nats)", f"{sub['val_loss']:.6f}"),
            ("eval mode", str(sub["eval_mode"])), ("legality", _verdict(sub)),
            ("bytes total", f"{sub['bytes_total']:,} (limit {sub['bytes_limit']:,}, margin {sub['bytes_margin']:,})"),
            ("bytes model / code", f"{sub['bytes_model']:,} / {sub['bytes_code']:,}"),
            ("seed", str(sub["seed"])), ("steps", str(sub["steps"])),
            ("train time (s)", "-" if sub["train_time_s"] is None else f"{sub['train_time_s']:.1f}"),
            ("hardware", f"{sub['world_size']} x {sub['device']}"), ("pgolf", sub["pgolf_version"])]
    lines = [f"# {sub['name'] or 'pgolf record'}", ""]
    if sub["author"]:
        lines += [f"Author: {sub['author']}", ""]
    missing = missing_identity(sub)
    if missing:
        lines += [f"{'/'.join(missing)} not given (`pgolf export --name ... --author ...` sets them)", ""]
    lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    if sub.get("stopped_early"):
        lines += [f"**Stopped early:** training ended at step {sub['steps']} of the {sub['steps_planned']} it "
                  f"planned ({sub['stop_reason']}).", ""]
    if record_slot_noncausal(str(sub["eval_mode"])):
        lines += ["**Warning:** this evaluation uses batch SLOT as published, which is **non-causal**: its "
                  "delta is fitted on the very tokens it then scores. Use `causal-slot` for a legal number.", ""]
    lines += [f"Reproduce ({need}):" if need else "Reproduce:", "", "```", *steps, "```", "",
              "`train_gpt.py` is generated by `pgolf export`; its preset holds this run's config, and the "
              "reference environment variables override it." if not lean else
              "`train_gpt.py` is generated by `pgolf export` and runs this run's config, frozen in it "
              "(quant.code_lean): the environment may set only DATA_PATH, TOKENIZER_PATH, RUN_ID, SEED and "
              "PGOLF_RUN_DEVICE, and a variable that would change anything else stops it before any work."]
    if compressed:
        lines.append("Here `train_gpt.py` (the counted file) is the self-extracting compressed form of "
                     "`train_gpt_readable.py`, shipped beside it.")
    if plots:
        lines += ["", "## Plots", "", *(f"![{Path(p).stem}](plots/{p})" for p in plots)]
    return "\n".join(lines) + "\n"


def record_plots(run: Path) -> list[Path]:
    """The PNGs `pgolf train` or `pgolf plot RUN` left in the run's plots/ folder, curves first."""
    return sorted((run / RUN_PLOTS).glob("*.png"), key=lambda p: (p.name != "curves.png", p.name))


# An absolute or home path anywhere in a line (values, messages with "_" for spaces), but
# not a ratio like step:6/100.
_LOCAL_PATH = re.compile(r"(?<![A-Za-z0-9./~])~?/[^\s:,;]+")


def scrub_local_paths(log: str) -> str:
    """A log fit to publish: every `/abs/path/name` becomes `<local>/name`, so a record
    carries no path of the machine it was trained on."""
    return _LOCAL_PATH.sub(lambda m: "<local>/" + os.path.basename(m.group(0).rstrip("/")), log)


def _write(tmp: Path, run: Path, code: dict[str, str], sub: dict[str, Any], readme: str) -> None:
    for fname, text in code.items():
        (tmp / fname).write_text(text, encoding="utf-8", newline="\n")
    shutil.copyfile(run / RUN_ARTIFACT, tmp / "final_model.ptz")
    log = (run / RUN_LOG).read_text(encoding="utf-8")
    (tmp / "train.log").write_text(scrub_local_paths(log), encoding="utf-8", newline="\n")
    (tmp / "submission.json").write_text(json.dumps(sub, indent=2) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(readme, encoding="utf-8")
    if (tmp / "final_model.ptz").stat().st_size != sub["bytes_model"]:
        raise RecordError(f"{run / RUN_ARTIFACT} changed while copying; export again")
    header = read_artifact_header(tmp / "final_model.ptz")
    ours, theirs = sub.get("config_hash"), header.get("config_hash")
    if ours and theirs and ours != theirs:
        raise RecordError(f"{run / RUN_ARTIFACT}: config hash {theirs} differs from metrics.json's {ours}; "
                          f"the artifact comes from another run, export the folder that run wrote")


def export_record(run_dir: str | os.PathLike, out_dir: str | os.PathLike, name: str = "", author: str = "",
                  minify: bool = False, compressed: bool = False) -> dict[str, Any]:
    """Write a challenge record folder for a finished run; returns its submission.json content.

    Refuses (RecordError, nothing written) a non-empty `out_dir`, an incomplete run folder or
    a total over the limit (the run's quant.max_artifact_bytes, at most 16,000,000). The
    folder appears whole or not at all: it is built beside `out_dir` and renamed.
    """
    run, out = Path(run_dir), Path(out_dir)
    _check_out(out)
    metrics, cfg = _check_run(run)
    code = _code(cfg, minify, compressed)
    limit = min(int(cfg.quant.max_artifact_bytes), CHALLENGE_LIMIT_BYTES)
    report = budget_report((run / RUN_ARTIFACT).stat().st_size, len(code["train_gpt.py"].encode("utf-8")), limit)
    check_budget(report, f"of record {out} (from {run})")
    sub = _submission(metrics, cfg, report, name, author, limit)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = record_plots(run)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        readme = record_readme(sub, "train_gpt_readable.py" in code, tuple(p.name for p in plots),
                               reproduce_steps(metrics, cfg), cfg.quant.code_lean)
        _write(tmp, run, code, sub, readme)
        if plots:
            (tmp / RUN_PLOTS).mkdir()
            for p in plots:
                shutil.copyfile(p, tmp / RUN_PLOTS / p.name)
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
