"""Run folders: nothing of the user's is overwritten, failed starts leave nothing behind,
failed runs keep their weights and never pass as results."""

import json
import sys
from pathlib import Path

import pytest
import torch

import pgolf.eval.final as final_mod
import pgolf.quant.export as export_mod
import pgolf.run as run_mod
from pgolf.errors import TrainingError
from pgolf.runfolder import MARKER, RunFolder, read_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import tiny  # noqa: E402


def _make(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


REFUSED = [
    ("user files, no log", {"config.toml": "mine", "metrics.json": "{}", "model.ptz": "x"}, "not a pgolf run folder"),
    ("one stray file", {"notes.txt": "hello"}, "not a pgolf run folder"),
    ("an older pgolf run", {"config.toml": "[run]", "log.txt": "step:1"}, "already holds a run"),
    ("a run in training", {MARKER: '{"format": 1, "state": "training"}', "log.txt": "x"}, "already holds a run"),
    ("a finished run", {MARKER: '{"format": 1, "state": "done"}', "metrics.json": "{}"}, "already holds a run"),
]


@pytest.mark.parametrize("label,files,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_claim_refuses_folders_that_are_not_ours_and_changes_nothing(tmp_path, label, files, message):
    out = tmp_path / "out"
    _make(out, files)
    with pytest.raises(TrainingError, match=message) as e:
        RunFolder.claim_new(out)
    assert "\n" not in str(e.value) and str(out) in str(e.value)
    assert {p.name: p.read_text() for p in out.iterdir()} == files


ACCEPTED = [("missing", None), ("empty", {}), ("a failed start", {MARKER: '{"format": 1, "state": "new"}'})]


@pytest.mark.parametrize("label,files", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_claim_accepts_new_empty_and_failed_start_folders(tmp_path, label, files):
    out = tmp_path / "out"
    if files is not None:
        _make(out, files)
    folder = RunFolder.claim_new(out)
    assert read_state(out) == "new" and folder.created == (files is None)


@pytest.mark.parametrize("target", ["file", "under_a_file"])
def test_claim_of_an_unusable_path_is_one_line(tmp_path, target):
    f = tmp_path / "f"
    f.write_text("x")
    path = f if target == "file" else f / "run"
    with pytest.raises(TrainingError) as e:
        RunFolder.claim_new(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("files,message", [
    (None, "no such run folder"), ({"a.txt": "x"}, "not a pgolf run folder"),
    ({MARKER: '{"format": 1, "state": "done"}'}, "already finished"),
    ({MARKER: '{"format": 1, "state": "training"}', "metrics.json": "{}"}, "already finished"),
])
def test_resume_refuses_what_cannot_be_resumed(tmp_path, files, message):
    out = tmp_path / "out"
    if files is not None:
        _make(out, files)
    with pytest.raises(TrainingError, match=message):
        RunFolder.open_existing(out)


def test_failure_before_the_first_step_leaves_no_folder(embedded_corpus, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise TrainingError("simulated failure while priming")
    monkeypatch.setattr(run_mod, "prime", boom)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="simulated"):
        run_mod.train(tiny(embedded_corpus), str(out))
    assert not out.exists()
    kept = tmp_path / "kept"  # a folder the user made: it stays, emptied of what pgolf wrote
    kept.mkdir()
    with pytest.raises(TrainingError, match="simulated"):
        run_mod.train(tiny(embedded_corpus), str(kept))
    assert kept.is_dir() and list(kept.iterdir()) == []
    monkeypatch.undo()
    assert run_mod.train(tiny(embedded_corpus), str(out))["steps"] == 6  # the retry just works
    assert read_state(out) == "done"


def test_resume_of_a_finished_run_leaves_it_untouched(embedded_corpus, tmp_path):
    out = tmp_path / "run"
    run_mod.train(tiny(embedded_corpus), str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(TrainingError, match="already finished"):
        run_mod.train(tiny(embedded_corpus), str(out), resume=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_export_error_after_training_keeps_the_trained_weights(embedded_corpus, tmp_path, monkeypatch):
    from pgolf.quant.artifact import ArtifactError

    def broken(*a, **k):
        raise ArtifactError("simulated compressor failure")
    monkeypatch.setattr(export_mod, "pack_artifact", broken)
    out = tmp_path / "run"
    with pytest.raises(ArtifactError):
        run_mod.train(tiny(embedded_corpus), str(out))
    flat = torch.load(out / "final_state.pt", weights_only=True)
    assert "tok_emb.weight" in flat and all(torch.isfinite(v).all() for v in flat.values())


def test_nan_after_quantization_is_a_failed_run(embedded_corpus, tmp_path, monkeypatch):
    real = final_mod.load_round_trip

    def poisoned(path, cfg, device):
        model = real(path, cfg, device)
        with torch.no_grad():
            model.tok_emb.weight.fill_(float("nan"))
        return model
    monkeypatch.setattr(final_mod, "load_round_trip", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="not finite") as e:
        run_mod.train(tiny(embedded_corpus), str(out))
    assert "\n" not in str(e.value)
    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON: no NaN literal
    assert metrics["legal"] is False and metrics["val_bpb"] is None and "val_bpb" in metrics["failed"]
    assert (out / "final_state.pt").is_file()
    from pgolf.record import RecordError, export_record
    with pytest.raises(RecordError, match="failed"):
        export_record(str(out), str(tmp_path / "record"))
