"""pgolf stats: one-sided significance tests over seeds, on fake run folders."""

import json
import math
from pathlib import Path

import pytest

from pgolf.cli import main
from pgolf.stats import StatsError, collect_runs, compare_runs, student_t_sf


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
    with pytest.raises(StatsError, match="nats_to_metric"):
        compare_runs([0.65, 0.651], [0.66, 0.661], metric="val_bpb")


def test_t_test_needs_two_runs() -> None:
    with pytest.raises(StatsError, match="at least 2"):
        compare_runs([1.1], [1.2, 1.21])
    with pytest.raises(StatsError, match="--against-value"):
        compare_runs([1.1, 1.11], [1.2])
    with pytest.raises(StatsError, match="at least 2"):
        compare_runs([1.1], 1.2)


def _metrics_run(root: Path, name: str, loss: float, seed: int, mode: str = "sliding") -> str:
    d = root / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"val_loss": loss, "val_bpb": loss * 0.6, "seed": seed,
                                                "eval_mode": mode, "legal": True}))
    return str(d)


def test_collect_runs_reads_run_and_record_folders(tmp_path: Path) -> None:
    rec = tmp_path / "rec"  # a record folder as pgolf export writes it: submission.json
    rec.mkdir()
    (rec / "submission.json").write_text(json.dumps({"val_loss": 1.95, "val_bpb": 1.13, "seed": 7}))
    runs = collect_runs([_metrics_run(tmp_path, "a", 1.9, 1), rec])
    assert [r["val_loss"] for r in runs] == [1.9, 1.95] and runs[1]["path"].endswith("submission.json")
    with pytest.raises(StatsError, match="no metrics.json"):
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
    from pgolf.stats import stats_for_runs
    new = [_metrics_run(tmp_path, f"n{s}", v, s, mode="ttt") for s, v in enumerate([1.100, 1.101])]
    old = [_metrics_run(tmp_path, f"o{s}", v, s) for s, v in enumerate([1.120, 1.121])]
    res = stats_for_runs(new, against=old)
    assert res["warnings"] == ["new runs use eval mode ttt but old runs sliding"]
    assert res["runs"]["old"][0].endswith("metrics.json")
