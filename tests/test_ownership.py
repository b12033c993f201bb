"""Who may touch what: the run folder names its own files, quantization knows nothing of
distribution, and the commands that read a finished run never load the training loop."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf.run import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import tiny  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src" / "pgolf"
# The files of a run folder; only runfolder.py spells their names.
RUN_FILE_NAMES = ("log.txt", "config.toml", "metrics.json", "model.ptz", "final_state.pt", "ckpt_rank")
# Modules of the training loop: a command that only reads a run has no use for them.
TRAINING_LOOP = ("pgolf.train", "pgolf.run", "pgolf.optim.builder", "pgolf.optim.muon", "pgolf.checkpoint",
                 "pgolf.wallclock")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_quant_imports_nothing_of_distribution() -> None:
    quant = sorted((SRC / "quant").glob("*.py"))
    assert len(quant) > 5
    direct = {p.name: sorted(m for m in _imports(p) if m == "pgolf.dist" or m.startswith("torch.distributed"))
              for p in quant}
    assert not any(direct.values()), direct
    # Nor through anything they import.
    names = [f"pgolf.quant.{p.stem}" for p in quant if p.stem != "__init__"]
    code = (f"import importlib, sys\nfor m in {names!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'pgolf.dist'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_only_the_run_folder_spells_run_file_names() -> None:
    pattern = re.compile(r"""["'](?:%s)""" % "|".join(re.escape(n) for n in RUN_FILE_NAMES))
    spelt = {str(p.relative_to(SRC)): pattern.findall(p.read_text(encoding="utf-8"))
             for p in SRC.rglob("*.py") if p.name != "runfolder.py"}
    assert not {k: v for k, v in spelt.items() if v}


@pytest.fixture(scope="module")
def finished_run(embedded_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ownership") / "run"
    train(tiny(embedded_corpus, "quant.small_numel=0"), str(out))
    return out


@pytest.mark.slow
def test_commands_that_read_a_run_never_load_the_training_loop(finished_run, tmp_path) -> None:
    run = str(finished_run)
    commands = {
        "eval": ["eval", run],
        "audit": ["audit", run, "--mode", "plain"],
        "bench eval": ["bench", "eval", run, "--modes", "plain"],
        "bench quant": ["bench", "quant", run, "--variant", "row6:matrix_bits=6", "--set", "quant.matrix_bits=6"],
        "plot": ["plot", run, "--out", str(tmp_path / "p.png")],
        "export": ["export", run, "--out", str(tmp_path / "record")],
        "compare": ["compare", run, run],
        "stats": ["stats", run, run, "--against-value", "10"],
        "sample": ["sample", run, "--tokens", "4"],
    }
    # One process runs every command in turn, so a module loaded by any of them shows.
    code = ("import json, sys\nfrom pgolf.cli import main\nseen = {}\n"
            f"for name, argv in {commands!r}.items():\n"
            "    rc = main(argv)\n"
            f"    seen[name] = [rc, sorted(m for m in {TRAINING_LOOP!r} if m in sys.modules)]\n"
            "print('RESULT ' + json.dumps(seen))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    line = next((s for s in out.stdout.splitlines() if s.startswith("RESULT ")), None)
    assert line is not None, out.stderr[-3000:]
    seen = json.loads(line[len("RESULT "):])
    ran = {k: v[0] for k, v in seen.items()}
    loaded = {k: v[1] for k, v in seen.items() if v[1]}
    assert not loaded, loaded
    # Each command did its work (audit exits 1 when a check fails, which is not this test's concern).
    assert all(rc in (0, 1) if k == "audit" else rc == 0 for k, rc in ran.items()), (ran, out.stderr[-3000:])
