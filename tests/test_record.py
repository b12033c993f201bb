"""Record folders (pgolf export) and multi-seed statistics (pgolf stats), on fake run folders."""

import base64
import json
import lzma
import math
import re
import tomllib
from pathlib import Path

import pytest
import torch

from pgolf.cli import main
from pgolf.config import config_to_toml, resolve_config
from pgolf.quant.artifact import OverBudgetError, pack_artifact, read_artifact, write_artifact
from pgolf.record import (RecordError, collect_runs, compare_runs, export_record, record_slot_noncausal, scrub_local_paths,
                          regularized_incomplete_beta, student_t_sf)

MACHINE = "/home/alice/private_data"


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"tok_emb.weight": torch.randn(64, 16, generator=g),
            "blocks.0.mlp.fc.weight": torch.randn(32, 16, generator=g),
            "blocks.0.attn.q_gain": torch.ones(4)}


def make_run(root: Path, name: str = "run", limit: int = 16_000_000, eval_mode: str = "sliding",
             val_loss: float = 1.9, seed: int = 1337, legal: bool | None = True) -> Path:
    """A finished run folder as pgolf train leaves it, without training."""
    cfg, _ = resolve_config("smoke", env={})
    cfg.data.path = f"{MACHINE}/fineweb10B_sp1024"
    cfg.data.tokenizer_path = f"{MACHINE}/tok.model"
    cfg.data.cache_dir = f"{MACHINE}/cache"
    cfg.run.out_dir = f"{MACHINE}/runs/{name}"
    cfg.run.seed = seed
    cfg.quant.max_artifact_bytes = limit
    run = root / name
    run.mkdir(parents=True)
    text = config_to_toml(cfg)
    (run / "config.toml").write_text(text)
    write_artifact(run / "model.ptz", pack_artifact(_state_dict(), cfg.quant, "cafe", meta={"config_toml": text}))
    (run / "log.txt").write_text(f"event:run out_dir:{MACHINE}/runs/{name}\n"
                                 f"event:config section:data path:{MACHINE}/fineweb10B_sp1024\n"
                                 "event:final val_loss:1.9 val_bpb:1.1\n")
    metrics = {"val_loss": val_loss, "val_bpb": val_loss * 0.58, "eval_mode": eval_mode, "legal": legal,
               "steps": 300, "train_time_s": 12.5, "world_size": 1, "device": "cpu", "seed": seed,
               "weights_sha256": "ab" * 32, "config_hash": "cafe", "model_bytes": 1, "code_bytes": 1}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def _tree(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


# ---------------------------------------------------------------- export

def test_export_writes_a_complete_record(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    out = tmp_path / "records" / "r1"
    sub = export_record(run, out, name="smoke record", author="tester")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["train_gpt.py", "final_model.ptz", "train.log", "submission.json", "README.md"])
    on_disk = json.loads((out / "submission.json").read_text())
    assert on_disk == sub
    model_bytes = (out / "final_model.ptz").stat().st_size
    code_bytes = (out / "train_gpt.py").stat().st_size
    assert sub["bytes_model"] == model_bytes == (run / "model.ptz").stat().st_size
    assert sub["bytes_code"] == code_bytes and code_bytes > 10_000
    assert sub["bytes_total"] == model_bytes + code_bytes
    assert sub["bytes_margin"] == 16_000_000 - sub["bytes_total"]
    assert (sub["name"], sub["author"], sub["seed"], sub["steps"], sub["eval_mode"]) == (
        "smoke record", "tester", 1337, 300, "sliding")
    assert sub["legal"] is True and sub["val_loss"] == 1.9 and re.fullmatch(r"\d{4}-\d\d-\d\d", sub["date"])
    # The log travels without this machine's paths; everything else in it is kept.
    shipped = (out / "train.log").read_text()
    assert MACHINE not in shipped and "path:<local>/fineweb10B_sp1024" in shipped
    assert shipped.splitlines()[2] == (run / "log.txt").read_text().splitlines()[2]
    sd, _ = read_artifact(out / "final_model.ptz")
    assert sd["blocks.0.mlp.fc.weight"].shape == (32, 16)
    readme = (out / "README.md").read_text()
    assert "torchrun --standalone --nproc_per_node=8 train_gpt.py" in readme and "SEED=1337" in readme
    assert f"{sub['bytes_total']:,}" in readme and "non-causal" not in readme
    # The folder appeared by rename: no temporary folder is left beside it.
    assert [p.name for p in out.parent.iterdir()] == ["r1"]


def test_shipped_code_holds_no_machine_paths(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    export_record(make_run(tmp_path), out)
    code = (out / "train_gpt.py").read_text()
    assert MACHINE not in code and "alice" not in code
    preset = tomllib.loads(code.split("BUNDLED_PRESET = ")[1].split('"""')[1])
    assert preset["model"]["num_layers"] == 4 and "out_dir" not in preset["run"]
    assert not {"path", "tokenizer_path", "cache_dir"} & set(preset.get("data", {}))
    compile(code, "train_gpt.py", "exec")


@pytest.mark.parametrize("line,expected", [
    ("event:run out_dir:/srv/x/runs/a", "event:run out_dir:<local>/a"),
    ("tokenizer_path:~/tok/fineweb.model seed:1", "tokenizer_path:<local>/fineweb.model seed:1"),
    ("message:no_shards_in_/data/sets/x:_fix_it", "message:no_shards_in_<local>/x:_fix_it"),
    ("step:6/100 ratio:a/b", "step:6/100 ratio:a/b"),
])
def test_scrub_local_paths(line: str, expected: str) -> None:
    assert scrub_local_paths(line) == expected


def test_refuses_a_symlink_as_out(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "rec"
    link.symlink_to(target)
    with pytest.raises(RecordError, match="symbolic link"):
        export_record(make_run(tmp_path), link)
    assert list(target.iterdir()) == []


def test_export_into_empty_existing_folder(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    out.mkdir()
    export_record(make_run(tmp_path), out)
    assert (out / "submission.json").is_file()


def test_refuses_non_empty_out_and_changes_nothing(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    out = tmp_path / "rec"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before, run_before = _tree(tmp_path / "rec"), _tree(run)
    with pytest.raises(RecordError, match="not an empty folder"):
        export_record(run, out)
    assert _tree(out) == before and _tree(run) == run_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec", "run"]


@pytest.mark.parametrize("missing", ["log.txt", "metrics.json", "model.ptz", "config.toml"])
def test_refuses_incomplete_run_naming_the_file(tmp_path: Path, missing: str) -> None:
    run = make_run(tmp_path)
    (run / missing).unlink()
    with pytest.raises(RecordError, match=re.escape(f"missing {missing}")) as e:
        export_record(run, tmp_path / "rec")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "rec").exists()


def test_refuses_artifact_of_another_run(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "config_hash": "beef"}))
    with pytest.raises(RecordError, match="another run"):
        export_record(run, tmp_path / "rec")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_refuses_corrupt_artifact(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    blob = bytearray((run / "model.ptz").read_bytes())
    blob[-1] ^= 0xFF
    (run / "model.ptz").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="checksum"):
        export_record(run, tmp_path / "rec")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_budget_limit_is_the_run_config_limit(tmp_path: Path) -> None:
    # The limit is part of the shipped preset: keep its digit count so the code size stays put.
    total = export_record(make_run(tmp_path, "a", limit=999_999), tmp_path / "ra")["bytes_total"]
    assert 100_000 < total < 999_999
    assert export_record(make_run(tmp_path, "b", limit=total), tmp_path / "rb")["bytes_margin"] == 0
    with pytest.raises(OverBudgetError, match="1 bytes over"):
        export_record(make_run(tmp_path, "c", limit=total - 1), tmp_path / "rc")
    assert not (tmp_path / "rc").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_limit_never_exceeds_the_challenge_limit(tmp_path: Path) -> None:
    sub = export_record(make_run(tmp_path, limit=10**9), tmp_path / "rec")
    assert sub["bytes_limit"] == 16_000_000


def test_compressed_export_ships_readable_source(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    sub = export_record(make_run(tmp_path), out, compressed=True)
    packed, readable = (out / "train_gpt.py").read_text(), (out / "train_gpt_readable.py").read_text()
    assert sub["bytes_code"] == len(packed.encode()) < len(readable.encode()) // 2
    blob = re.search(r'b85decode\("([^"]+)"\)', packed).group(1)
    raw = lzma.decompress(base64.b85decode(blob), lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    assert raw.decode() == readable
    assert "train_gpt_readable.py" in (out / "README.md").read_text()


def test_minified_export_is_smaller(tmp_path: Path) -> None:
    plain = export_record(make_run(tmp_path, "a"), tmp_path / "ra")["bytes_code"]
    small = export_record(make_run(tmp_path, "b"), tmp_path / "rb", minify=True)["bytes_code"]
    assert small < plain * 0.8


def test_readme_flags_non_causal_slot(tmp_path: Path) -> None:
    export_record(make_run(tmp_path, "a", eval_mode="ttt+slot", legal=False), tmp_path / "ra")
    export_record(make_run(tmp_path, "b", eval_mode="ttt+causal-slot"), tmp_path / "rb")
    assert "non-causal" in (tmp_path / "ra" / "README.md").read_text()
    assert "NOT legal" in (tmp_path / "ra" / "README.md").read_text()
    assert "non-causal" not in (tmp_path / "rb" / "README.md").read_text()
    assert [record_slot_noncausal(m) for m in ("slot", "sliding+slot", "causal-slot", "ttt+causal-slot", "ttt")] == [
        True, True, False, False, False]


def test_cli_export(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path)
    assert main(["export", str(run), "--out", str(tmp_path / "rec"), "--name", "n"]) == 0
    out = capsys.readouterr().out
    sub = json.loads((tmp_path / "rec" / "submission.json").read_text())
    assert f"margin {sub['bytes_margin']:,}" in out
    assert main(["export", str(run), "--out", str(tmp_path / "rec")]) == 2
    assert "not an empty folder" in capsys.readouterr().err


# ---------------------------------------------------------------- statistics

def _t_sf_numeric(t: float, df: float, n: int = 20000) -> float:
    """P(T > t) by Simpson's rule over the density on [0, t] (t > 0)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    pdf = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = t / n
    s = pdf(0) + pdf(t) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
    return 0.5 - s * h / 3


@pytest.mark.parametrize("t,df,table", [(2.0, 5, 0.05097), (3.0, 10, 0.006672), (2.015, 5, 0.05),
                                        (2.764, 10, 0.01), (1.0, 1, 0.25), (2.5, 3.7, None)])
def test_student_t_tail(t: float, df: float, table: float | None) -> None:
    p = student_t_sf(t, df)
    assert p == pytest.approx(_t_sf_numeric(t, df), abs=1e-9)
    if table is not None:
        assert p == pytest.approx(table, abs=5e-5)
    assert student_t_sf(-t, df) == pytest.approx(1 - p, abs=1e-12)
    # df = 2 has a closed form: P(T > t) = 1/2 - t / (2 sqrt(t^2 + 2)).
    assert student_t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(t * t + 2)), abs=1e-12)


def test_incomplete_beta_identities() -> None:
    for x in (0.05, 0.3, 0.7, 0.97):
        assert regularized_incomplete_beta(1.0, 3.5, x) == pytest.approx(1 - (1 - x) ** 3.5, abs=1e-12)
        assert regularized_incomplete_beta(2.5, 0.5, x) == pytest.approx(
            1 - regularized_incomplete_beta(0.5, 2.5, 1 - x), abs=1e-12)
    assert regularized_incomplete_beta(2, 3, 0.4) == pytest.approx(0.5248, abs=1e-12)
    with pytest.raises(RecordError):
        regularized_incomplete_beta(1, 1, 1.5)


def test_clearly_significant_welch() -> None:
    r = compare_runs([1.100, 1.101, 1.099], [1.120, 1.121, 1.119])
    assert r["delta"] == pytest.approx(0.02) and r["test"] == "Welch t"
    se = math.sqrt(2 * 1e-6 / 3)
    assert r["t"] == pytest.approx(0.015 / se) and r["df"] == pytest.approx(4.0)
    assert r["p_value"] == pytest.approx(student_t_sf(0.015 / se, 4.0)) and r["p_value"] < 1e-4
    assert r["significant"] is True and r["new"]["std"] == pytest.approx(0.001)


def test_gain_below_margin_is_not_significant() -> None:
    # A real, consistent improvement of 0.003 nats does not clear the 0.005 margin.
    r = compare_runs([1.1170, 1.1171, 1.1169], [1.1200, 1.1201, 1.1199])
    assert r["delta"] == pytest.approx(0.003) and r["p_value"] > 0.99 and r["significant"] is False
    # ... but it does against a zero margin.
    assert compare_runs([1.1170, 1.1171, 1.1169], [1.1200, 1.1201, 1.1199], min_delta_nats=0.0)["significant"]


def test_noisy_gain_is_not_significant_and_alpha_matters() -> None:
    new, old = [1.100, 1.106, 1.103], [1.112, 1.118, 1.115]
    r = compare_runs(new, old)
    # delta 0.012, se = sqrt(2 * 9e-6 / 3), df 4 -> t = 0.007 / 0.002449 = 2.858, p ~ 0.023
    assert r["t"] == pytest.approx(0.007 / math.sqrt(6e-6)) and 0.01 < r["p_value"] < 0.05
    assert r["significant"] is False
    assert compare_runs(new, old, alpha=0.05)["significant"] is True


def test_welch_unequal_variances_df() -> None:
    r = compare_runs([1.0, 1.01, 1.02, 1.03], [1.1, 1.2])
    a, b = (0.01 ** 2 * 5 / 3) / 4, 0.005 / 2
    assert r["df"] == pytest.approx((a + b) ** 2 / (a * a / 3 + b * b / 1))


def test_one_sample_against_published_value() -> None:
    r = compare_runs([1.100, 1.102, 1.104], 1.1154)
    t = (1.1154 - 1.102 - 0.005) / (0.002 / math.sqrt(3))
    assert r["test"] == "one-sample t" and r["df"] == 2.0 and r["t"] == pytest.approx(t)
    assert r["p_value"] == pytest.approx(0.5 - t / (2 * math.sqrt(t * t + 2)))
    assert r["significant"] is True
    assert compare_runs([1.108, 1.110, 1.112], 1.1154)["significant"] is False


def test_bpb_metric_converts_the_margin() -> None:
    r = compare_runs([0.650, 0.651], [0.660, 0.661], metric="val_bpb", nats_to_metric=0.6)
    assert r["min_delta"] == pytest.approx(0.003) and r["min_delta_nats"] == 0.005
    with pytest.raises(RecordError, match="nats_to_metric"):
        compare_runs([0.65, 0.651], [0.66, 0.661], metric="val_bpb")


def test_t_test_needs_two_runs() -> None:
    with pytest.raises(RecordError, match="at least 2"):
        compare_runs([1.1], [1.2, 1.21])
    with pytest.raises(RecordError, match="--against-value"):
        compare_runs([1.1, 1.11], [1.2])
    with pytest.raises(RecordError, match="at least 2"):
        compare_runs([1.1], 1.2)


def _metrics_run(root: Path, name: str, loss: float, seed: int, mode: str = "sliding") -> str:
    d = root / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"val_loss": loss, "val_bpb": loss * 0.6, "seed": seed,
                                                "eval_mode": mode, "legal": True}))
    return str(d)


def test_collect_runs_reads_run_and_record_folders(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    export_record(make_run(tmp_path, val_loss=1.95), rec)
    runs = collect_runs([_metrics_run(tmp_path, "a", 1.9, 1), rec])
    assert [r["val_loss"] for r in runs] == [1.9, 1.95] and runs[1]["path"].endswith("submission.json")
    with pytest.raises(RecordError, match="no metrics.json"):
        collect_runs([tmp_path / "rec" / ".."])


def test_cli_stats(tmp_path: Path, capsys) -> None:
    new = [_metrics_run(tmp_path, f"n{s}", v, s) for s, v in enumerate([1.100, 1.101, 1.099])]
    old = [_metrics_run(tmp_path, f"o{s}", v, s) for s, v in enumerate([1.120, 1.121, 1.119])]
    assert main(["stats", *new, "--against", *old]) == 0
    out = capsys.readouterr().out
    assert "verdict: SIGNIFICANT at alpha 0.01" in out and "Welch t" in out and "bpb:" in out
    assert main(["stats", *new, "--against", *old, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["significant"] is True and res["bpb"]["delta"] == pytest.approx(0.012) and res["warnings"] == []
    assert main(["stats", *new, "--against-value", "1.1154", "--min-delta", "0.02"]) == 0
    assert "verdict: not significant" in capsys.readouterr().out
    assert main(["stats", *new, "--against", *old, "--metric", "val_bpb", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["min_delta"] == pytest.approx(0.003)


def test_cli_stats_input_errors(tmp_path: Path, capsys) -> None:
    a = _metrics_run(tmp_path, "a", 1.1, 1)
    b = _metrics_run(tmp_path, "b", 1.1, 1, mode="ttt")
    assert main(["stats", a, b]) == 2
    assert "exactly one of --against" in capsys.readouterr().err
    assert main(["stats", a, "--against-value", "1.2"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["stats", a, b, "--against-value", "1.2"]) == 0
    out = capsys.readouterr().out
    assert "mix eval modes" in out and "repeat a seed" in out
    assert main(["stats", str(tmp_path / "nope"), a, "--against-value", "1.2"]) == 2
    assert "not found" in capsys.readouterr().err


def test_stats_warns_when_groups_use_different_eval_modes(tmp_path: Path) -> None:
    from pgolf.record import stats_for_runs
    new = [_metrics_run(tmp_path, f"n{s}", v, s, mode="ttt") for s, v in enumerate([1.100, 1.101])]
    old = [_metrics_run(tmp_path, f"o{s}", v, s) for s, v in enumerate([1.120, 1.121])]
    res = stats_for_runs(new, against=old)
    assert res["warnings"] == ["new runs use eval mode ttt but old runs sliding"]
    assert res["runs"]["old"][0].endswith("metrics.json")
