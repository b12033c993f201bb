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


def test_eval_refuses_an_artifact_of_another_run(finished_run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.ptz").write_bytes((finished_run / "model.ptz").read_bytes())
    text = (finished_run / "config.toml").read_text().replace("seed = 1337", "seed = 7")
    assert text != (finished_run / "config.toml").read_text()
    (other / "config.toml").write_text(text)
    assert main(["eval", str(other)]) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "config hash" in err and len(err.strip().splitlines()) == 1


def test_eval_accepts_a_run_written_before_fields_were_added(finished_run, tmp_path, capsys):
    """An older pgolf wrote a config.toml without today's newest fields, and hashed that text."""
    import hashlib

    from pgolf.config import read_config_file
    from pgolf.quant.artifact import pack_artifact, read_artifact, write_artifact
    old = tmp_path / "old"
    old.mkdir()
    lines = (finished_run / "config.toml").read_text().splitlines()
    text = "\n".join(ln for ln in lines if not ln.startswith("trackers")) + "\n"  # a field it lacked
    (old / "config.toml").write_text(text)
    state, _ = read_artifact(finished_run / "model.ptz")
    cfg = read_config_file(old / "config.toml")
    write_artifact(old / "model.ptz", pack_artifact(state, cfg.quant, hashlib.sha256(text.encode()).hexdigest()[:16]))
    assert main(["eval", str(old)]) == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] > 0
