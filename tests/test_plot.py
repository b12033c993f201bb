"""Plots drawn from run logs: the series each panel holds, read back from the figure objects."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf.config import config_to_toml, resolve_config, shippable_config
from pgolf.plot import (CURVE_PANELS, draw_budget, draw_curves, label_runs, parse_run_history, plot_runs, stopped_early,
                        write_run_plots)

pytest.importorskip("matplotlib", reason="plots need the pgolf[plot] extra (matplotlib)")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# A log with train steps, one validation and a quantization round trip, but no TTT progress,
# no artifact event and no model.ptz: the panels without data must stay empty, not fail.
PARTIAL_LOG = """event:config section:model num_layers:2 model_dim:32
event:run out_dir:/x params:100 arch:baseline
step:1/4 train_loss:6.9 lr_mult:1 momentum:0.85 step_ms:50 step_avg_ms:50 tokens_per_s:100 train_time_s:0.1 eta_s:1
step:2/4 train_loss:6.5 lr_mult:0.8 momentum:0.86 step_ms:40 step_avg_ms:45 tokens_per_s:100 train_time_s:0.2 eta_s:1
step:2 val_loss:6.4 val_bpb:3.9
step:3/4 train_loss:6.2 lr_mult:0.5 momentum:0.87 step_ms:40 step_avg_ms:43 tokens_per_s:100 train_time_s:0.3 eta_s:1
event:quant_round_trip pre_quant_val_bpb:3.8 post_quant_val_bpb:3.85 quant_penalty_bpb:0.05
"""


def _lines(fig) -> dict[str, int]:
    return {ax.get_label(): len(ax.lines) for ax in fig.axes if ax.get_label()}


def _run_folder(root: Path, name: str, log: str, **run_sets) -> Path:
    run = root / name
    run.mkdir()
    (run / "log.txt").write_text(log)
    sets = [f"run.{k}={v}" for k, v in run_sets.items()]
    (run / "config.toml").write_text(config_to_toml(resolve_config("smoke", None, {}, sets)[0]))
    return run


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_partial_log_draws_only_the_series_it_has(tmp_path):
    h = parse_run_history(PARTIAL_LOG, "partial")
    counts = _lines(draw_curves([h]))
    assert counts == {"train_loss_step": 1, "train_loss_time": 1, "val_bpb": 1, "schedule": 2, "step_ms": 1,
                      "ttt_bpb": 0}
    budget = draw_budget([h])
    quant = next(ax for ax in budget.axes if ax.get_label() == "quant_penalty")
    assert [round(p.get_height(), 4) for p in quant.patches] == [3.8, 3.85]  # no final eval in the log
    bytes_ax = next(ax for ax in budget.axes if ax.get_label() == "byte_budget")
    assert not bytes_ax.patches
    run = _run_folder(tmp_path, "partial", PARTIAL_LOG)
    paths = plot_runs([str(run)])
    assert [p.name for p in paths] == ["curves.png", "budget.png"] and all(_is_png(p) for p in paths)


def test_a_later_line_for_a_step_replaces_the_earlier_one():
    resumed = PARTIAL_LOG + "step:3/4 train_loss:6.1 lr_mult:0.5 momentum:0.87 step_ms:40 train_time_s:0.3\n"
    h = parse_run_history(resumed)
    assert h.column(h.train, "train_loss") == ([1.0, 2.0, 3.0], [6.9, 6.5, 6.1])


def test_ttt_panel_keeps_the_last_ttt_eval():
    log = "".join(f"eval:ttt chunks:{i}/3 tokens:{i} running_bpb:{5 - i} eta:0.0s\n" for i in (1, 2, 3))
    log += "eval:plain windows:1/1 tokens:9 running_bpb:9 eta:0.0s\n"
    log += "".join(f"eval:ttt+slot chunks:{i}/2 tokens:{i} running_bpb:{3 - i} eta:0.0s\n" for i in (1, 2))
    h = parse_run_history(log)
    assert h.ttt_mode == "ttt+slot" and h.ttt == {1: 2.0, 2: 1.0}
    assert _lines(draw_curves([h]))["ttt_bpb"] == 1


def test_several_runs_share_axes_and_the_legend_names_differing_fields(tmp_path):
    a = _run_folder(tmp_path, "a", PARTIAL_LOG, seed=1)
    b = _run_folder(tmp_path, "b", PARTIAL_LOG.replace("train_loss:6.2", "train_loss:6.0"), seed=2)
    out = tmp_path / "cmp.png"
    paths = plot_runs([str(a), str(b)], out)
    assert paths == [out, tmp_path / "cmp_budget.png"] and all(_is_png(p) for p in paths)
    hs = [parse_run_history(PARTIAL_LOG, "a"), parse_run_history(PARTIAL_LOG, "b")]
    label_runs(hs, [{"run.seed": "1", "model.x": "2"}, {"run.seed": "2", "model.x": "2"}])
    assert [h.label for h in hs] == ["a seed=1", "b seed=2"]
    fig = draw_curves(hs)
    assert _lines(fig)["train_loss_step"] == 2 and _lines(fig)["schedule"] == 4
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a seed=1", "b seed=2"]


def test_write_run_plots_warns_instead_of_failing(tmp_path):
    said = []
    assert write_run_plots(tmp_path / "nothing", warn=said.append) == []
    assert len(said) == 1 and "no log.txt" in said[0]


@pytest.mark.slow
def test_plots_of_a_real_smoke_run(embedded_corpus, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from _train_helpers import tiny

    from pgolf.run import train
    cfg = tiny(embedded_corpus, "run.val_loss_every=2", "eval.ttt_enabled=true", "eval.ttt_chunk_tokens=128",
               "eval.audit=false")
    run = tmp_path / "run"
    train(cfg, str(run))
    paths = write_run_plots(run)
    assert [p.name for p in paths] == ["curves.png", "budget.png"] and all(_is_png(p) for p in paths)
    from pgolf.plot import load_run_history
    h = load_run_history(run)
    lines = (run / "log.txt").read_text().splitlines()
    logged = {int(ln.split()[0][5:].split("/")[0]) for ln in lines if ln.startswith("step:") and "train_loss:" in ln}
    assert sorted(h.train) == sorted(logged) and 6 in logged
    vals = {int(ln.split()[0][5:]) for ln in lines if ln.startswith("step:") and "val_bpb:" in ln}
    assert sorted(h.val) == sorted(vals) and len(vals) >= 2
    assert len(h.ttt) == 4  # 512 val tokens in chunks of 128
    counts = _lines(draw_curves([h]))
    # val_bpb: the validation curve and the final score (a star at the last step).
    assert counts == {label: (2 if label in ("schedule", "val_bpb") else 1) for label, *_ in CURVE_PANELS}
    # The byte groups come from model.ptz and add up to it (each group's share, rounded).
    groups = dict(h.groups)
    assert {"embedding", "attention", "mlp"} <= set(groups)
    assert abs(sum(groups.values()) - (run / "model.ptz").stat().st_size) <= len(groups)


@pytest.mark.slow
def test_bundled_script_runs_without_matplotlib_or_trackers(embedded_corpus, tmp_path):
    from pgolf.bundle import bundle_for_config
    sys.path.insert(0, str(Path(__file__).parent))
    from _train_helpers import tiny
    cfg = tiny(embedded_corpus, "run.iterations=2", "eval.audit=false", "run.trackers=tensorboard")
    text = bundle_for_config(shippable_config(cfg), "run")
    import ast
    nodes = list(ast.walk(ast.parse(text)))
    imported = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in nodes if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] in ("matplotlib", "tensorboard", "wandb")}
    assert not {m for m in imported if "tensorboard" in m}
    (tmp_path / "train_gpt.py").write_text(text)
    blocked = ["pgolf", "matplotlib", "tensorboard", "wandb", "torch.utils.tensorboard"]
    runner = ("import runpy, sys; sys.modules.update(dict.fromkeys(%r)); "
              "runpy.run_path('train_gpt.py', run_name='__main__')") % blocked
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DATA_PATH": embedded_corpus["data_path"],
           "TOKENIZER_PATH": embedded_corpus["tokenizer_path"], "RUN_ID": "bare"}
    import os
    env["PATH"] = os.environ.get("PATH", env["PATH"])
    res = subprocess.run([sys.executable, "-c", runner], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads(next((tmp_path / "runs").glob("*/metrics.json")).read_text())
    assert metrics["steps"] == 2


def test_the_final_score_and_an_early_stop_are_drawn() -> None:
    """A run with no validation during training still shows its final val_bpb, and a run
    that stopped before its planned steps says so on both figures."""
    log = "\n".join(["step:1/300 train_loss:6.9 train_time:10ms step_avg:10.00ms",
                     "step:5/300 train_loss:6.5 train_time:50ms step_avg:10.00ms",
                     "event:train_done reason:wallclock_cap steps:5 planned:300 stopped_early:True train_time_s:300",
                     "event:quant_round_trip pre_quant_val_bpb:4.3625 post_quant_val_bpb:4.3654 "
                     "quant_penalty_bpb:0.0029",
                     "event:final val_loss:6.9 val_bpb:4.3654 mode:plain legal:True tokens:2048 bytes:4000"])
    h = parse_run_history(log, "busy")
    assert stopped_early(h) == "stopped at 5 of 300 steps (wallclock_cap)"
    curves = draw_curves([h])
    assert _lines(curves)["val_bpb"] == 1 and "stopped at 5 of 300" in curves._suptitle.get_text()
    budget = draw_budget([h])
    qa = next(a for a in budget.axes if a.get_label() == "quant_penalty")
    assert qa.get_ylim()[0] == 0 and "+0.0029" in qa.get_title()
    assert "stopped at 5 of 300" in budget._suptitle.get_text()
    assert stopped_early(parse_run_history(log.replace("steps:5 planned:300", "steps:300 planned:300"))) == ""
