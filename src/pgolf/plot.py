"""Pictures of runs, drawn from their logs alone (so runs older than this module work too).

`curves.png`: train loss vs step and vs wall-clock, val bpb, LR multiplier and Muon momentum,
step time, and TTT's running bpb per chunk. `budget.png`: bpb before/after quantization and
the artifact's bytes per tensor group (from model.ptz's manifest when it is there). Several
runs share one figure, labelled by name and the config fields in which they differ.

matplotlib is an extra (`pip install 'pgolf[plot]'`), imported only when drawing: a bundled
train_gpt.py never reaches this module.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pgolf.atomic import atomic_write
from pgolf.compare import differing_fields, run_config
from pgolf.errors import PgolfError
from pgolf.quant.artifact import read_artifact
from pgolf.runfolder import RUN_ARTIFACT, RUN_LOG, RUN_PLOTS
from pgolf.runlog import parse_event

PLOT_CURVES = "curves.png"
PLOT_BUDGET = "budget.png"
PLOT_INSTALL = "pip install 'pgolf[plot]'"
# Axes of the curves figure: label (read back by tests and trackers), title, x, y.
CURVE_PANELS = (
    ("train_loss_step", "train loss", "step", "train loss (nats)"),
    ("train_loss_time", "train loss vs wall-clock", "train time (s)", "train loss (nats)"),
    ("val_bpb", "val bpb at each validation", "step", "val bpb"),
    ("schedule", "LR multiplier (solid) and momentum (dashed)", "step", "value"),
    ("step_ms", "step time", "step", "ms per step"),
    ("ttt_bpb", "TTT running bpb", "chunk", "running bpb"),
)


class PlotError(PgolfError, ValueError):
    """A run that cannot be drawn, or matplotlib missing (one line naming the fix)."""


@dataclass
class RunHistory:
    """What a run's log says, as columns of floats (a later line for a step replaces an earlier one)."""

    name: str
    train: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> train_loss, lr_mult, ...
    val: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> val_loss, val_bpb
    ttt: dict[int, float] = field(default_factory=dict)  # chunk -> running bpb of the last TTT eval
    ttt_mode: str = ""
    events: dict[str, dict[str, str]] = field(default_factory=dict)  # last line of each event kind
    groups: list[tuple[str, int]] = field(default_factory=list)  # (tensor group, bytes), from model.ptz
    label: str = ""

    def column(self, rows: dict[int, dict[str, float]], key: str) -> tuple[list[float], list[float]]:
        steps = [s for s in sorted(rows) if key in rows[s]]
        return [float(s) for s in steps], [rows[s][key] for s in steps]


def _float(v: str) -> float | None:
    try:
        x = float(v.rstrip("s"))
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _numbers(ev: dict[str, str]) -> dict[str, float]:
    return {k: x for k, v in ev.items() if (x := _float(v)) is not None}


def parse_run_history(text: str, name: str = "run") -> RunHistory:
    """A RunHistory from log text; lines it does not know are skipped, so a partial log draws."""
    h = RunHistory(name)
    for line in text.splitlines():
        ev = parse_event(line)
        if "event" in ev:
            h.events[ev["event"]] = ev
        elif "step" in ev:
            step = _float(ev["step"].split("/")[0])
            if step is None:
                continue
            rows = h.val if "val_bpb" in ev else h.train if "train_loss" in ev else None
            if rows is not None:
                nums = _numbers({k: v for k, v in ev.items() if k != "step"})
                rows.setdefault(int(step), {}).update(nums)
        elif "eval" in ev and "chunks" in ev and "running_bpb" in ev:
            done = ev["chunks"].split("/")[0]
            bpb = _float(ev["running_bpb"])
            if not done.isdigit() or bpb is None:
                continue
            if int(done) == 1 or ev["eval"] != h.ttt_mode:
                h.ttt, h.ttt_mode = {}, ev["eval"]  # a new TTT eval starts: keep only the last one
            h.ttt[int(done)] = bpb
    return h


def budget_group(name: str) -> str:
    """The group a state-dict tensor counts towards in the byte budget."""
    parts = name.split(".")
    if "attn" in parts or name.startswith("qo_bank") or name.startswith("kv_bank"):
        return "attention"
    if "mlp" in parts or name.startswith("mlp_"):
        return "mlp"
    if name.startswith(("tok_emb", "lm_head")):
        return "embedding"
    if name.startswith("bigram"):
        return "bigram hash"
    if name.startswith("ve"):
        return "value emb"
    return "other"


def _entry_bytes(m: dict[str, Any], packed: bool) -> int:
    """Stored bytes of one manifest entry: its byte ranges when listed, else from shape and bits."""
    ranges = [m[k] for k in ("q", "s", "d") if isinstance(m.get(k), list) and len(m[k]) == 2]
    if ranges:
        return sum(int(r[1]) for r in ranges)
    numel = math.prod(m.get("shape") or [1])
    bits = int(m.get("bits", 16))
    if bits >= 16:
        return numel * (4 if m.get("method") == "raw" else 2)
    rows = (m.get("shape") or [1])[0] if m.get("shape") else 1
    codes = math.ceil(numel * bits / 8) if packed and bits < 8 else numel
    return codes + 2 * rows  # fp16 scale per row


def artifact_groups(run: Path) -> list[tuple[str, int]]:
    """(group, bytes) of the run's model.ptz: each group's share of the compressed file, in
    proportion to its stored bytes (compression acts on the whole body, not per tensor)."""
    if not (run / RUN_ARTIFACT).is_file():
        return []
    _, header = read_artifact(run / RUN_ARTIFACT)
    stored: dict[str, int] = {}
    for m in header.get("manifest", []):
        g = budget_group(m["name"])
        # Each entry says how its codes were stored (bit-packed or one byte per code).
        stored[g] = stored.get(g, 0) + _entry_bytes(m, m.get("layout") == "packed")
    total = sum(stored.values()) or 1
    return sorted(((g, round(b * header["total_bytes"] / total)) for g, b in stored.items()), key=lambda x: -x[1])


def load_run_history(run_dir: str | Path) -> RunHistory:
    run = Path(run_dir)
    log = run / RUN_LOG
    if not log.is_file():
        raise PlotError(f"{run}: no log.txt; pass a run folder written by pgolf train")
    h = parse_run_history(log.read_text(encoding="utf-8", errors="replace"), run.resolve().name)
    try:
        h.groups = artifact_groups(run)
    except (PgolfError, ValueError, OSError):
        h.groups = []  # a damaged artifact still leaves the curves worth drawing
    return h


def label_runs(histories: list[RunHistory], configs: list[dict[str, str]]) -> None:
    """Legend labels: run name plus the config fields in which the runs differ."""
    fields = differing_fields(configs) if len(configs) > 1 else []
    for h, cfg in zip(histories, configs):
        diff = " ".join(f"{f.split('.', 1)[1]}={_short(cfg.get(f, '-'))}" for f in fields[:4])
        h.label = f"{h.name} {diff}".strip() + (" ..." if len(fields) > 4 else "")


def _short(value: str) -> str:
    """A config value short enough for a legend: a path by its last part."""
    v = Path(value).name or value if "/" in value else value
    return v if len(v) <= 24 else v[:21] + "..."


def _figure(rows: int, cols: int, size: tuple[float, float]):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(f"matplotlib is not installed; {PLOT_INSTALL}") from None
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False).ravel()


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in the log", ha="center", va="center", transform=ax.transAxes, color="0.5")


def draw_curves(histories: list[RunHistory]):
    """The curves figure; each axes carries its CURVE_PANELS label, one line per run with data."""
    fig, axes = _figure(2, 3, (15, 8))
    for ax, (label, title, xl, yl) in zip(axes, CURVE_PANELS):
        ax.set_label(label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    ax = dict(zip([p[0] for p in CURVE_PANELS], axes))
    for i, h in enumerate(histories):
        kw = {"color": f"C{i % 10}", "label": h.label or h.name}
        s, loss = h.column(h.train, "train_loss")
        if s:
            ax["train_loss_step"].plot(s, loss, **kw)
        t, loss_t = h.column({int(r["train_time_s"] * 1000): r for r in h.train.values() if "train_time_s" in r},
                             "train_loss")
        if t:
            ax["train_loss_time"].plot([x / 1000 for x in t], loss_t, **kw)
        s, bpb = h.column(h.val, "val_bpb")
        if s:
            ax["val_bpb"].plot(s, bpb, marker="o", **kw)
        final, last = _event_float(h, "final", "val_bpb"), _event_float(h, "train_done", "steps")
        if final is not None:  # the run's score, after quantization and its eval mode
            mode = h.events["final"].get("mode", "")
            ax["val_bpb"].plot([last or (s[-1] if s else 0.0)], [final], marker="*", markersize=12, linestyle="",
                               **{**kw, "label": f"{kw['label']} final ({mode})"})
        for key, style in (("lr_mult", "-"), ("momentum", "--")):
            s, v = h.column(h.train, key)
            if s:
                ax["schedule"].plot(s, v, linestyle=style, **{**kw, "label": f"{kw['label']} {key}"})
        s, ms = h.column(h.train, "step_ms")
        if s:
            ax["step_ms"].plot(s, ms, **kw)
        if h.ttt:
            chunks = sorted(h.ttt)
            ax["ttt_bpb"].plot(chunks, [h.ttt[c] for c in chunks], **kw)
    names = {"train_loss_step": "train steps", "train_loss_time": "train steps", "val_bpb": "validation",
             "schedule": "schedule", "step_ms": "step times", "ttt_bpb": "TTT eval"}
    for label, a in ax.items():
        if not a.lines:
            _empty(a, names[label])
    modes = sorted({h.ttt_mode for h in histories if h.ttt})
    if modes:
        ax["ttt_bpb"].set_title(f"TTT running bpb ({', '.join(modes)})", fontsize=10)
    _stopped_title(fig, histories)
    _legend(fig, histories)
    return fig


def stopped_early(h: RunHistory) -> str:
    """"stopped at S of N steps (reason)" when the run's log says it made fewer steps than planned."""
    done = h.events.get("train_done", {})
    steps, planned = _float(done.get("steps", "")), _float(done.get("planned", ""))
    if steps is None or planned is None or steps >= planned:
        return ""
    return f"stopped at {steps:.0f} of {planned:.0f} steps ({done.get('reason', '?')})"


def _stopped_title(fig, histories: list[RunHistory]) -> None:
    notes = [f"{h.label or h.name}: {note}" for h in histories if (note := stopped_early(h))]
    if notes:
        fig.suptitle("; ".join(notes), color="C3", fontsize=10)


def _legend(fig, histories: list[RunHistory]) -> None:
    """One legend for the whole figure, below it: run i is colour Ci on every panel."""
    from matplotlib.patches import Patch
    handles = [Patch(color=f"C{i % 10}", label=h.label or h.name) for i, h in enumerate(histories)]
    wide = max(len(h.get_label()) for h in handles) > 60
    fig.legend(handles=handles, loc="outside lower center", ncols=1 if wide else min(len(handles), 3), fontsize=8)


def _event_float(h: RunHistory, event: str, key: str) -> float | None:
    return _float(h.events.get(event, {}).get(key, ""))


def draw_budget(histories: list[RunHistory]):
    """bpb before/after quantization and after the final eval; bytes per tensor group."""
    fig, (qa, ba) = _figure(1, 2, (13, 5.5))
    qa.set_label("quant_penalty")
    qa.set_title("quantization penalty (bpb)", fontsize=10)
    ba.set_label("byte_budget")
    ba.set_title("artifact bytes by tensor group\n(shares of the compressed model, by stored bytes)", fontsize=10)
    stages = (("pre-quant", "quant_round_trip", "pre_quant_val_bpb"),
              ("post-quant", "quant_round_trip", "post_quant_val_bpb"), ("final eval", "final", "val_bpb"))
    width = 0.8 / max(len(histories), 1)
    values = []
    for i, h in enumerate(histories):
        ys = [_event_float(h, ev, k) for _, ev, k in stages]
        xs = [j + i * width for j, y in enumerate(ys) if y is not None]
        ys = [y for y in ys if y is not None]
        if ys:
            qa.bar(xs, ys, width, color=f"C{i % 10}", label=h.label or h.name)
            values += ys
    qa.set_xticks([j + width * (len(histories) - 1) / 2 for j in range(len(stages))], [s[0] for s in stages])
    if values:
        # From zero, so a small penalty looks small; the values and the penalty are written out.
        qa.set_ylim(0, max(values) * 1.15)
        for bar in qa.patches:
            qa.annotate(f"{bar.get_height():.4f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
        pens = [(h.label or h.name, _event_float(h, "quant_round_trip", "quant_penalty_bpb")) for h in histories]
        pens = [f"{n}: {p:+.4f}" if len(histories) > 1 else f"{p:+.4f}" for n, p in pens if p is not None]
        if pens:
            qa.set_title(f"quantization penalty (bpb): {', '.join(pens)}", fontsize=10)
    else:
        _empty(qa, "quantization round trip")
    _bytes(ba, histories)
    _stopped_title(fig, histories)
    _legend(fig, histories)
    return fig


def _bytes(ax, histories: list[RunHistory]) -> None:
    groups: list[str] = []
    per_run = []
    for h in histories:
        parts = dict(h.groups)
        if not parts and "artifact" in h.events:
            parts = {"model": int(_event_float(h, "artifact", "model_bytes") or 0)}
        code = _event_float(h, "artifact", "code_bytes")
        if parts and code:
            parts["code"] = int(code)
        per_run.append(parts)
        groups += [g for g in parts if g not in groups]
    if not groups:
        _empty(ax, "artifact")
        return
    height = 0.8 / len(histories)
    for i, (h, parts) in enumerate(zip(histories, per_run)):
        ys = [j + i * height for j, g in enumerate(groups) if g in parts]
        if ys:
            bars = ax.barh(ys, [parts[g] for g in groups if g in parts], height, color=f"C{i % 10}")
            ax.bar_label(bars, fmt="{:,.0f}", fontsize=7, padding=2)
    ax.set_yticks([j + height * (len(histories) - 1) / 2 for j in range(len(groups))], groups)
    ax.invert_yaxis()
    ax.margins(x=0.15)
    totals = ", ".join(f"{sum(p.values()):,}" for p in per_run if p)
    ax.set_xlabel(f"bytes; total {totals} (limit 16,000,000 for model + code)")


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as PNG atomically (a reader never sees half an image)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, lambda f: fig.savefig(f, format="png", dpi=100))
    return p


def plot_runs(run_dirs: list[str], out: str | Path | None = None) -> list[Path]:
    """Draw runs (one or several on the same axes); returns the PNGs written.

    out: the curves PNG; the budget PNG goes beside it as <stem>_budget.png. Default: a
    single run's own plots/ folder, or runs_curves.png here for several runs.
    """
    if not run_dirs:
        raise PlotError("no run folders given; pass at least one folder written by pgolf train")
    histories = [load_run_history(r) for r in run_dirs]
    label_runs(histories, [run_config(Path(r)) for r in run_dirs])
    if out is None and len(run_dirs) == 1:
        folder = Path(run_dirs[0]) / RUN_PLOTS
        if folder.is_symlink():  # a run's own plots stay inside the run folder
            raise PlotError(f"{folder} is a symbolic link: pgolf writes a run's plots only into a real folder; "
                            "remove the link or pass --out (nothing was written)")
        curves = folder / PLOT_CURVES
    elif out is None:
        curves = Path("runs_curves.png")
    else:
        curves = Path(out)
    budget = curves.with_name(PLOT_BUDGET if out is None and len(run_dirs) == 1 else f"{curves.stem}_budget.png")
    return [save_figure(draw_curves(histories), curves), save_figure(draw_budget(histories), budget)]


def write_run_plots(run_dir: str | Path, warn: Callable[[str], Any] = print) -> list[Path]:
    """The plots of a finished run in its plots/ folder; never raises (a plot is not worth a run)."""
    try:
        return plot_runs([str(run_dir)])
    except Exception as e:  # noqa: BLE001 - any failure is reported, the run's results stand
        warn(f"warning: plots of {run_dir} not written: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return []
