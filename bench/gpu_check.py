"""Helper of bench/gpu_check.sh: the machine's facts, and one JSON + summary from all steps.

    python bench/gpu_check.py env                      -> JSON facts (card, torch, commit, ...)
    python bench/gpu_check.py gather OUT WORK BUDGET    -> OUT/gpu_check.json, summary on stdout

The shell script runs the steps (each under its own timeout) and appends one line per step
to WORK/steps.jsonl; everything a step produced is read from where the script put it.
"""

import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_VAL_TOKENS = 62_021_632


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def commit_info() -> dict:
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": os.environ.get("PGOLF_COMMIT") or None,
                "git_note": "no .git in this checkout (a copy of the working tree): commit unknown"
                            + (", PGOLF_COMMIT given by the caller" if os.environ.get("PGOLF_COMMIT") else "")}
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty_files": len(dirty.splitlines()) if dirty else 0}


def env_facts() -> dict:
    import torch
    facts = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "host": socket.gethostname(), "python": platform.python_version(), "torch": torch.__version__,
             "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "card": "cpu (no CUDA device)"}
    try:
        import triton
        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(card=props.name, gpus=torch.cuda.device_count(),
                     capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                     memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
    facts.update(commit_info())
    return facts


def _read_json(path: Path):
    """A step's JSON output, or None; tolerates log lines printed before the JSON."""
    try:
        text = path.read_text()
    except OSError:
        return None
    starts = [i for i, line in enumerate(text.splitlines()) if line.startswith(("{", "["))]
    for i in starts:
        try:
            return json.loads("\n".join(text.splitlines()[i:]))
        except json.JSONDecodeError:
            continue
    return None


def junit_summary(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    cases = {}
    for case in suite.iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome, detail = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome, detail = tag, (el.get("message") or "")[:400]
        cases[name] = {"outcome": outcome, "seconds": float(case.get("time", 0) or 0), "detail": detail}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "cases": cases}


def _log_events(path: Path, names: tuple[str, ...]) -> dict:
    """The key:value events of a run's log.txt that matter here (priming, artifact, eval_time)."""
    out = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = dict(f.split(":", 1) for f in line.split() if ":" in f)
        if fields.get("event") in names:
            out[fields["event"]] = {k: v for k, v in fields.items() if k != "event"}
    return out


def _throughput_view(res: dict | None) -> dict | None:
    if not isinstance(res, dict):
        return None
    keys = ("device", "tokens_per_step", "grad_accum", "micro_batch_seqs", "seq_len", "steps", "median_ms",
            "mean_ms", "min_ms", "max_ms", "tokens_per_s", "ratio_to_ref", "flops_per_token", "achieved_tflops",
            "peak_bf16_tflops", "peak_source", "mfu", "peak_mem_bytes", "first_step_s", "compile_s", "warmup_s",
            "qat", "loss_first", "loss_last", "params")
    return {k: res.get(k) for k in keys}


def gather(out: Path, work: Path, budget: float) -> dict:
    steps = []
    try:
        steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines() if line.strip()]
    except OSError:
        pass
    metrics = _read_json(work / "run" / "metrics.json")
    eval_rows = _read_json(work / "eval_phases.json")
    result = {
        "schema": 1, **env_facts(), "budget_s": budget, "elapsed_s": sum(s.get("seconds", 0) for s in steps),
        "steps": steps,
        "tests": {"junit": junit_summary(out / "junit_gpu.xml"), "report": _read_json(out / "gpu_tests_report.json")},
        "throughput": {"accum1_48x2048": _throughput_view(_read_json(work / "throughput_accum1.json")),
                       "accum8_786432": _throughput_view(_read_json(work / "throughput_accum8.json"))},
        "train": None if metrics is None else {
            **{k: metrics.get(k) for k in ("val_bpb", "pre_quant_val_bpb", "post_quant_plain_val_bpb",
                                           "quant_penalty_bpb", "eval_mode", "legal", "artifact_bytes",
                                           "model_bytes", "code_bytes", "budget_margin", "steps", "stop_reason",
                                           "step_avg_ms", "tokens_per_s", "train_time_s", "wall_time_s",
                                           "eval_phase_seconds", "device")},
            "log_events": _log_events(work / "run" / "log.txt", ("priming_done", "late_qat_on", "artifact",
                                                                  "eval_time", "train_done"))},
        "eval_phases": eval_rows,
        "kernels": {"micro": _read_json(work / "kernels.json"),
                    "record_1855_on": _throughput_view(_read_json(work / "throughput_1855_kernels_on.json")),
                    "record_1855_off": _throughput_view(_read_json(work / "throughput_1855_kernels_off.json"))},
    }
    result["summary"] = summary_lines(result)
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, out / "gpu_check.json")
    return result


def _fmt_tp(name: str, t: dict | None) -> str:
    if not t or t.get("median_ms") is None:
        return f"{name}: no result"
    mfu = f"MFU {100 * t['mfu']:.1f}%" if t.get("mfu") is not None else f"MFU n/a ({t.get('peak_source')})"
    comp = f", compile ~{t['compile_s']:.0f} s" if t.get("compile_s") is not None else ""
    return (f"{name}: {t['median_ms']:.1f} ms/step, {t['tokens_per_s']:,.0f} tok/s "
            f"({(t.get('ratio_to_ref') or 0):.2f} x ref 1.18M), {t['achieved_tflops']:.0f} TFLOP/s, {mfu}, "
            f"peak {t['peak_mem_bytes'] / 2**30:.1f} GiB{comp}")


def summary_lines(r: dict) -> list[str]:
    commit = r.get("git_commit") or r.get("git_note")
    lines = [f"card: {r['card']}  torch {r['torch']} (CUDA {r['cuda']})  {r['date']}  commit: {commit}"
             + (f" (+{r['git_dirty_files']} modified files)" if r.get("git_dirty_files") else "")]
    for s in r["steps"]:
        lines.append(f"step {s['step']}: {s['status']} in {s.get('seconds', 0):.0f} s"
                     + (f" (timeout {s['timeout_s']} s)" if s.get("timeout_s") else "")
                     + (f" - {s['note']}" if s.get("note") else ""))
    j = r["tests"]["junit"]
    if j is None and any(s["step"] == "a" for s in r["steps"]):
        lines.append("(a) tests: no junit report (pytest killed?); partial numbers in gpu_tests_report.json")
    if j:
        bad = [n for n, c in j["cases"].items() if c["outcome"] in ("failure", "error")]
        lines.append(f"(a) tests: {j['passed']} passed, {j['skipped']} skipped, {j['failures']} failed, "
                     f"{j['errors']} errors" + (f"; failing: {', '.join(bad)}" if bad else ""))
    rep = r["tests"]["report"] or {}
    if "sdpa_backends" in rep:
        sb = rep["sdpa_backends"]
        runs = [n for n, v in sb["backends"].items() if v.get("runs")]
        lines.append(f"    SDPA bf16 GQA default: {sb.get('default_dispatch_bf16')}, kernels that run: {runs}; "
                     f"fp32 GQA: {sb.get('default_dispatch_fp32')}")
    if "bf16_vs_fp32" in rep:
        b = rep["bf16_vs_fp32"]
        lines.append(f"    bf16 vs fp32: loss rel diff {b['loss_rel_diff']:.2e}, grad cosine min "
                     f"{b['grad_cosine_min']:.5f} ({b['grad_cosine_min_param']})")
    tp = r["throughput"]
    lines.append("(b) " + _fmt_tp("48x2048, accum 1", tp["accum1_48x2048"]))
    lines.append("    " + _fmt_tp("786,432 tok/step, accum 8", tp["accum8_786432"]))
    t = r["train"]
    if t and t.get("val_bpb") is not None:
        lines.append(f"(c) train {t['steps']} steps ({t.get('stop_reason')}): val_bpb {t['val_bpb']:.4f} "
                     f"({t['eval_mode']}), pre-quant {t['pre_quant_val_bpb']:.4f}, quant penalty "
                     f"{t['quant_penalty_bpb']:+.4f}, artifact {t['artifact_bytes']:,} B, {t['step_avg_ms']:.1f} ms/step")
    else:
        lines.append("(c) train: no result")
    rows = r["eval_phases"]
    if isinstance(rows, list) and rows:
        proj = [f"{x['mode']} {x['seconds']:.1f} s -> {x.get('projected_seconds', float('nan')):.0f} s" for x in rows]
        lines.append(f"(d) eval on {rows[0]['tokens']:,} tokens -> {rows[0].get('project_tokens', FULL_VAL_TOKENS):,} "
                     f"on {rows[0].get('project_gpus', 8)} GPUs: " + "; ".join(proj))
    else:
        lines.append("(d) eval phases: no result")
    k = r.get("kernels") or {}
    for name, m in ((k.get("micro") or {}).items()):
        if isinstance(m, dict):
            errs = ", ".join(f"{e} {v:.2e}" for e, v in m.items() if e.startswith("max_err"))
            lines.append(f"(k) {name} {m['shape']} bf16: fused {m['fused_ms']:.2f} ms, eager {m['eager_ms']:.2f} ms, "
                         f"compiled eager {m['compiled_eager_ms']:.2f} ms; {errs}")
    if "record_1855_on" in k:
        lines.append("    " + _fmt_tp("record_1855 98,304 tok/step, kernels on", k["record_1855_on"]))
        lines.append("    " + _fmt_tp("record_1855 98,304 tok/step, kernels off", k["record_1855_off"]))
    return lines


def main(argv: list[str]) -> int:
    if argv[:1] == ["env"]:
        print(json.dumps(env_facts(), indent=2))
        return 0
    if argv[:1] == ["gather"] and len(argv) == 4:
        res = gather(Path(argv[1]), Path(argv[2]), float(argv[3]))
        print("\n".join(res["summary"]))
        print(f"all results: {Path(argv[1]) / 'gpu_check.json'}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
