"""`pgolf compare`: exactly the differing config fields, rows sorted by bpb, Welch test over seeds."""

import json
from pathlib import Path

from pgolf.cli import main
from pgolf.compare import compare_rows, compare_text, config_from_log, differing_fields, flat_config
from pgolf.config import config_to_dict, config_to_toml, resolve_config


def _run(root: Path, name: str, sets: list[str], val_loss: float, bpb: float, toml: bool = True) -> Path:
    run = root / name
    run.mkdir()
    cfg = resolve_config("smoke", None, {}, sets)[0]
    if toml:
        (run / "config.toml").write_text(config_to_toml(cfg))
    else:  # an older run: only the log's config lines
        lines = [" ".join([f"event:config section:{sec}", *(f"{k}:{str(v).replace(' ', '_')}" for k, v in vals.items())])
                 for sec, vals in config_to_dict(cfg).items()]
        (run / "log.txt").write_text("\n".join(lines) + "\n")
    metrics = {"val_loss": val_loss, "val_bpb": bpb, "eval_mode": "sliding", "legal": True, "seed": cfg.run.seed,
               "artifact_bytes": 1000, "budget_margin": 15_999_000, "steps": 10, "train_time_s": 1.5,
               "eval_seconds": 0.5}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_differing_fields_are_exactly_those_that_differ():
    a = {"model.x": "1", "model.y": "2", "run.out_dir": "a"}
    b = {"model.x": "1", "model.y": "3", "run.out_dir": "b", "model.z": "0"}
    assert differing_fields([a, b]) == ["model.y", "model.z"]  # out_dir names a place, not a setting
    assert differing_fields([a, a]) == []


def test_log_config_lines_read_like_the_toml(tmp_path):
    sets = ["model.num_layers=3", "optim.matrix_lr=0.03"]
    cfg = resolve_config("smoke", None, {}, sets)[0]
    from_toml = flat_config(config_to_dict(cfg))
    log = "\n".join(" ".join([f"event:config section:{s}", *(f"{k}:{str(v).replace(' ', '_')}" for k, v in vals.items())])
                    for s, vals in config_to_dict(cfg).items())
    assert flat_config(config_from_log(log)) == from_toml


def test_compare_picks_out_the_differing_fields_and_sorts_by_bpb(tmp_path):
    runs = [_run(tmp_path, "deep", ["model.num_layers=6"], 2.0, 1.30),
            _run(tmp_path, "base", [], 2.1, 1.35),
            _run(tmp_path, "wide_old", ["model.model_dim=192"], 1.9, 1.25, toml=False)]
    res = compare_rows([str(r) for r in runs])
    assert res["fields"] == ["model.model_dim", "model.num_layers"]
    assert [r["run"] for r in res["rows"]] == ["wide_old", "deep", "base"]
    assert [(r["model.model_dim"], r["model.num_layers"]) for r in res["rows"]] == [("192", "4"), ("128", "6"),
                                                                                      ("128", "4")]
    assert res["welch"] == []  # no run has a repeat
    text = compare_text(res).splitlines()
    assert text[0].split()[:3] == ["run", "model.model_dim", "model.num_layers"]
    assert "optim.matrix_lr" not in text[0]


def test_repeats_over_seeds_get_the_welch_test(tmp_path, capsys):
    runs = [_run(tmp_path, f"a{s}", [f"run.seed={s}"], v, v * 0.7) for s, v in ((1, 2.000), (2, 2.002), (3, 2.001))]
    runs += [_run(tmp_path, f"b{s}", [f"run.seed={s}", "model.num_layers=3"], v, v * 0.7)
             for s, v in ((1, 2.100), (2, 2.103), (3, 2.098))]
    res = compare_rows([str(r) for r in runs])
    assert res["fields"] == ["model.num_layers", "run.seed"]
    (w,) = res["welch"]
    assert sorted(w["new"]) == ["a1", "a2", "a3"] and sorted(w["old"]) == ["b1", "b2", "b3"]
    assert abs(w["delta"] - 0.0993333) < 1e-6 and w["significant"]
    assert main(["compare", *map(str, runs), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["welch"][0]["significant"] is True
    assert main(["compare", *map(str, runs)]) == 0
    assert "Welch t: a1, a2, a3 vs b1, b2, b3" in capsys.readouterr().out


def test_compare_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert "missing: not a run folder" in capsys.readouterr().err
