"""`pgolf eval`: JSON alone on stdout, and no scoring of another run's artifact."""

import json
import sys
from pathlib import Path

import pytest

from pgolf.cli import main
from pgolf.run import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import tiny  # noqa: E402


@pytest.fixture(scope="module")
def finished_run(embedded_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_cli") / "run"
    train(tiny(embedded_corpus), str(out))
    return out


def test_eval_prints_json_alone_on_stdout(finished_run, capsys):
    assert main(["eval", str(finished_run)]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)  # nothing else on stdout
    assert res["val_bpb"] > 0 and res["mode"] == "plain"
    assert "eval:plain" in captured.err  # progress went to stderr


def test_eval_scores_an_artifact_with_its_own_config_and_names_the_edits(finished_run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.ptz").write_bytes((finished_run / "model.ptz").read_bytes())
    text = (finished_run / "config.toml").read_text().replace("seed = 1337", "seed = 7")
    assert text != (finished_run / "config.toml").read_text()
    (other / "config.toml").write_text(text)
    assert main(["eval", str(finished_run)]) == 0
    want = json.loads(capsys.readouterr().out)
    assert main(["eval", str(other)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["val_bpb"] == want["val_bpb"]
    notes = [s for s in captured.err.splitlines() if s.startswith("note:")]
    assert len(notes) == 1 and "run.seed" in notes[0] and "artifact's config" in notes[0]


def test_eval_after_the_data_moved(finished_run, tmp_path, capsys):
    """config.toml edited to point at the data's new place: eval runs there, and says so."""
    import shutil
    text = (finished_run / "config.toml").read_text()
    tok = next(line.split(" = ")[1].strip('"') for line in text.splitlines() if line.startswith("tokenizer_path"))
    moved = tmp_path / "moved.model"
    shutil.copyfile(tok, moved)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "config.toml").write_text(text.replace(tok, str(moved)))
    assert main(["eval", str(run)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["val_bpb"] > 0
    assert "only this machine's paths" in captured.err
