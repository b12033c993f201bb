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
    assert rec.joined(head, parts) == text


@pytest.mark.slow
def test_shares_are_measured_on_the_counted_file_itself(capsys):
    # main() refuses (status 1) unless the rejoined sections pack to exactly the counted file:
    # the shares are then differences of real counted sizes.
    rec = _recipe()
    assert rec.main(["--preset", "smoke", "--groups", "conf=config,config_tree", "--groups", "model=model/*",
                     "--bounds", "model", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    from pgolf.bundle.build import bundle_for_config
    from pgolf.config import resolve_config
    cfg, _ = resolve_config("smoke", env={})
    modules = [m for m, _ in rec.sections(bundle_for_config(cfg, "run"))[1]]
    assert sorted(r["module"] for r in out["modules"]) == sorted(modules)
    assert out["groups"][0]["modules"] == ["pgolf/config.py", "pgolf/config_tree.py"]
    assert 0 < out["groups"][0]["counted_share"] < out["counted_bytes"]
    assert out["groups"][1]["modules"] == sorted(m for m in modules if m.startswith("pgolf/model/"))
    sizes = [out["counted_bytes"], *(b["counted_bytes"] for b in out["bounds"])]
    assert len(sizes) == 5 and sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 5
    assert out["bounds_left_out"] == out["groups"][1]["modules"]
    # the model left out first: the first bound is under the counted file without the model
    assert sizes[1] < out["counted_bytes"] - out["groups"][1]["counted_share"]
    assert rec.main(["--preset", "smoke", "--groups", "x=no_such_module"]) == 2
    assert "not in this bundle: pgolf/no_such_module.py" in capsys.readouterr().err
    assert rec.main(["--preset", "smoke", "--bounds", "nothing"]) == 2
    assert "--bounds nothing: no --groups of that name" in capsys.readouterr().err


BOUNDS_TEXT = '''import os


def check(x):
    if x.magnitude_of_the_value < 0:
        raise ValueError(f"x.magnitude_of_the_value={x.magnitude_of_the_value} is negative; pass a value at least 0")
    if x.magnitude_of_the_value > 99:
        raise ValueError("x.magnitude_of_the_value is over 99, which no run of this kind can use; lower it")
    print(f"checked the magnitude of the value {x.magnitude_of_the_value} against both of its limits", flush=True)
    return os.path.join(x.directory_of_the_value, x.magnitude_of_the_value.name_of_the_file)
'''


def test_bounds_remove_what_they_name_cumulatively():
    import ast
    rec = _recipe()
    tree = ast.parse(BOUNDS_TEXT)
    seen = []
    for _, transform in rec.BOUNDS:
        tree = ast.fix_missing_locations(transform().visit(tree))
        seen.append(ast.unparse(tree))
    assert "raise ValueError\n" in seen[0] and "negative" not in seen[0] and "print(f" in seen[0]
    assert "raise" not in seen[1] and "magnitude_of_the_value < 0" not in seen[1] and "print(f" in seen[1]
    assert "checked" not in seen[2] and "print(''" in seen[2]
    assert "magnitude_of_the_value" not in seen[3] and "directory" not in seen[3] and "flush" not in seen[3]
    sizes = [r["counted_bytes"] for r in rec.bounds(BOUNDS_TEXT, "brotli")]
    full = rec.counted_bytes(BOUNDS_TEXT, "brotli")
    assert full > sizes[0] > sizes[1] > sizes[2] > sizes[3]
