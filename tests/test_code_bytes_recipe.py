"""bench/code_bytes.py: each module's share of the counted train_gpt.py, measured on the file pgolf ships."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _recipe():
    spec = importlib.util.spec_from_file_location("code_bytes_recipe", REPO / "bench" / "code_bytes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sections_rejoin_to_the_bundle():
    rec = _recipe()
    text = "# head\nimport os\n\n\n# ---- pgolf/a.py ----\nA = 1\n\n\n# ---- pgolf/b.py ----\nB = 2\n"
    head, parts = rec.sections(text)
    assert [m for m, _ in parts] == ["pgolf/a.py", "pgolf/b.py"]
    assert head + "".join(f"# ---- {m} ----\n{body}" for m, body in parts) == text


@pytest.mark.slow
def test_shares_are_measured_on_the_counted_file_itself(capsys):
    # main() refuses (status 1) unless the rejoined sections pack to exactly the counted file:
    # the shares are then differences of real counted sizes.
    rec = _recipe()
    assert rec.main(["--preset", "smoke", "--groups", "conf=config,config_tree", "--groups", "model=model/*",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    from pgolf.bundle.build import bundle_for_config
    from pgolf.config import resolve_config
    cfg, _ = resolve_config("smoke", env={})
    modules = [m for m, _ in rec.sections(bundle_for_config(cfg, "run"))[1]]
    assert sorted(r["module"] for r in out["modules"]) == sorted(modules)
    assert out["groups"][0]["modules"] == ["pgolf/config.py", "pgolf/config_tree.py"]
    assert 0 < out["groups"][0]["counted_share"] < out["counted_bytes"]
    assert out["groups"][1]["modules"] == sorted(m for m in modules if m.startswith("pgolf/model/"))
    assert rec.main(["--preset", "smoke", "--groups", "x=no_such_module"]) == 2
    assert "not in this bundle: pgolf/no_such_module.py" in capsys.readouterr().err
