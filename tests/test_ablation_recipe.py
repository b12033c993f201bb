"""The frontier ablation recipe (bench/ablation.py) is sound without training anything."""
import importlib.util
import json
import re
from pathlib import Path

import pytest

from pgolf.config import config_to_dict, resolve_config

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
SECTION = "## Frontier ablation (CPU, FineWeb sample)"


def load_recipe():
    spec = importlib.util.spec_from_file_location("ablation_recipe", REPO / "bench" / "ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def flat_config(sets):
    cfg, warnings = resolve_config("record_1128", env={}, sets=sets)
    assert warnings == []
    return {f"{sec}.{k}": v for sec, vals in config_to_dict(cfg).items() for k, v in vals.items()}


def test_rows_resolve_and_change_only_their_technique():
    rec = load_recipe()
    base = flat_config(rec.BASE_SETS)
    names = [n for n, _ in rec.ablation_rows()]
    assert names[0] == "base" and len(names) == len(set(names))
    for name, sets in rec.ablation_rows():
        cfg = flat_config(rec.BASE_SETS + sets)
        changed = {k for k in cfg if cfg[k] != base[k]}
        named = {s.split("=", 1)[0] for s in sets}
        assert changed <= named, f"{name} changes {changed - named} beyond its overrides"
        if name != "base":
            assert changed, f"{name} changes nothing against the base"


def test_base_is_the_small_record_stack():
    rec = load_recipe()
    cfg = flat_config(rec.BASE_SETS)
    ref = flat_config([])
    assert cfg["model.arch"] == ref["model.arch"] == "record"
    assert cfg["run.iterations"] == rec.STEPS and cfg["run.max_wallclock_seconds"] == 0
    assert not cfg["eval.ttt_enabled"] and cfg["eval.slot_mode"] == "off" and not cfg["model.compile"]


def test_finished_rows_are_skipped_and_collected(tmp_path, monkeypatch):
    rec = load_recipe()
    calls = []
    monkeypatch.setattr(rec.subprocess, "call", lambda *a, **k: calls.append(a) or 1)
    out = tmp_path / "runs"
    for i, name in enumerate(["base", "skip_gates"]):
        (out / name).mkdir(parents=True)
        (out / name / "metrics.json").write_text(json.dumps({
            "params": 10, "steps": 3, "pre_quant_val_bpb": 3.0 - i / 10, "post_quant_plain_val_bpb": 3.1 - i / 5,
            "val_bpb": 3.05, "artifact_bytes": 99, "train_time_s": 1.0, "wall_time_s": 2.0, "seed": 1}))
    results = tmp_path / "res.json"
    rec.main([str(out), "--rows", "base,skip_gates,doc_mask", "--results", str(results)])
    rows = {r["name"]: r for r in json.loads(results.read_text())["rows"]}
    assert set(rows) == {"base", "skip_gates"}  # doc_mask "failed" (rc 1, no metrics)
    assert len(calls) == 1 and "model.doc_mask=true" in calls[0][0]
    assert rows["skip_gates"]["delta_float"] == pytest.approx(-0.1)
    assert rows["skip_gates"]["delta_quant"] == pytest.approx(-0.2)
    calls.clear()
    rec.main([str(out), "--rows", "base,skip_gates", "--results", str(results)])
    assert calls == []


def doc_table():
    text = DOC.read_text(encoding="utf-8")
    if SECTION not in text:
        return {}
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        m = re.match(r"\|\s*`([a-z_0-9]+)`\s*\|", line)  # data rows name their row in backticks
        if m:
            cells = [c.strip().replace(",", "") for c in line.strip().strip("|").split("|")]
            rows[m.group(1)] = cells
    return rows


def test_docs_table_matches_results():
    rec = load_recipe()
    if not rec.RESULTS.is_file():
        pytest.skip(f"{rec.RESULTS} absent: run bench/ablation.py first")
    entries = json.loads(rec.RESULTS.read_text())["rows"]
    table = doc_table()
    assert table, f"{DOC} has no '{SECTION}' table"
    assert set(table) == {e["name"] for e in entries}
    for e in entries:
        # columns: name | params | float | delta | quant | delta | final sliding
        cells = table[e["name"]]
        assert int(cells[1]) == e["params"]
        assert float(cells[2]) == round(e["val_bpb_float"], 4)
        assert float(cells[3]) == round(e["delta_float"], 4)
        assert float(cells[4]) == round(e["val_bpb_quant"], 4)
        assert float(cells[5]) == round(e["delta_quant"], 4)
        assert float(cells[6]) == round(e["val_bpb_final"], 4)
