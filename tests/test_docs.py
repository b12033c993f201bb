"""The deterministic figures in docs/benchmarks.md are recomputed here: a doc that drifts
from the code fails the suite. Each row of the doc's "Deterministic figures" table names a
figure this file knows how to compute; an unknown row fails too (nothing is left unchecked)."""

import json
import re
from pathlib import Path

import pytest

from pgolf.cli import main

pytestmark = [pytest.mark.slow]  # builds the record bundle and models: seconds per figure

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _info(preset: str, capsys) -> dict:
    assert main(["info", "--preset", preset, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _flops(preset: str) -> int:
    from pgolf.bench import bench_flops_per_token
    from pgolf.config import resolve_config
    from pgolf.model.gpt import GPT
    cfg, _ = resolve_config(preset, env={})
    return bench_flops_per_token(GPT(cfg.model), cfg.run.train_seq_len)["flops_per_token"]


FIGURES = {
    "params smoke": lambda c: _info("smoke", c)["params"],
    "params baseline": lambda c: _info("baseline", c)["params"],
    "params record_1128": lambda c: _info("record_1128", c)["params"],
    "params record_1855": lambda c: _info("record_1855", c)["params"],
    "code bytes record_1128": lambda c: _info("record_1128", c)["code_bytes"],
    "flops per token record_1128": lambda c: _flops("record_1128"),
}


def doc_figures() -> dict[str, int]:
    text = DOC.read_text(encoding="utf-8")
    table = text.split("## Deterministic figures", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([a-z0-9_ ]+?) \| ([\d,]+) \|", table, flags=re.M)
    return {name: int(value.replace(",", "")) for name, value in rows}


def test_every_deterministic_row_is_checked():
    rows = doc_figures()
    assert rows and set(rows) == set(FIGURES), set(rows) ^ set(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_doc_figure_matches_the_code(name, capsys):
    assert doc_figures()[name] == FIGURES[name](capsys)
