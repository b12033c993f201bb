"""What a file or a second user may not do to a run: ask for an unbounded model, write through
a link, share a folder with another run, or change a run's config behind its checkpoint; and
the one-line errors of the cases that used to print tracebacks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pgolf.quant.export as export_mod
import pgolf.run as run_mod
from pgolf.cli import main
from pgolf.config import config_to_toml, resolve_config
from pgolf.errors import RunFolderError, TrainingError
from pgolf.quant.artifact import ArtifactError, pack_artifact, write_artifact
from pgolf.runfolder import RunFolder, open_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import tiny  # noqa: E402


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------- caps on what a file asks for

def _artifact_asking_for(tmp_path: Path, *sets: str) -> Path:
    cfg, _ = resolve_config("smoke", None, {}, list(sets))
    sd = {"tok_emb.weight": torch.zeros(8, 4)}
    path = tmp_path / "big.ptz"
    write_artifact(path, pack_artifact(sd, cfg.quant, "beef", meta={"config_toml": config_to_toml(cfg)}))
    return path


def test_an_artifact_asking_for_a_huge_model_is_refused_before_building(tmp_path, capsys, monkeypatch):
    art = _artifact_asking_for(tmp_path, "model.model_dim=8192", "model.num_layers=48", "model.num_heads=64",
                               "model.num_kv_heads=8")
    assert art.stat().st_size < 1_000_000
    built = []
    monkeypatch.setattr("pgolf.model.build.build_model", lambda *a, **k: built.append(1))
    assert main(["eval", str(art)]) == 2
    err = _one_line_error(capsys)
    assert "params" in err and "nothing was built" in err and str(art) in err
    assert not built


def test_an_artifact_asking_for_a_huge_batch_is_refused(tmp_path):
    art = _artifact_asking_for(tmp_path, "eval.batch_tokens=67108864")
    with pytest.raises(RunFolderError, match="batch_tokens 67,108,864"):
        open_run(art)


def test_an_ordinary_config_passes_the_caps(tmp_path):
    art = _artifact_asking_for(tmp_path)
    assert open_run(art).config.model.model_dim > 0


# ---------------------------------------------------------------- links

def _stopped_run(embedded_corpus, tmp_path, monkeypatch, *sets) -> Path:
    """A run that trained, checkpointed, then failed at export: resumable."""
    def broken(*a, **k):
        raise ArtifactError("simulated compressor failure")
    monkeypatch.setattr(export_mod, "pack_artifact", broken)
    out = tmp_path / "run"
    with pytest.raises(ArtifactError):
        run_mod.train(tiny(embedded_corpus, "run.checkpoint_every=2", *sets), str(out))
    monkeypatch.undo()
    assert (out / "ckpt_rank0.pt").is_file() and not (out / "metrics.json").exists()
    return out


def test_resume_never_appends_through_a_linked_log(embedded_corpus, tmp_path, monkeypatch):
    run = _stopped_run(embedded_corpus, tmp_path, monkeypatch)
    outside = tmp_path / "outside.txt"
    outside.write_text("mine\n")
    (run / "log.txt").unlink()
    (run / "log.txt").symlink_to(outside)
    with pytest.raises(TrainingError, match="symbolic link") as e:
        run_mod.train(run_mod.resume_config(str(run)), str(run), resume=True)
    assert "\n" not in str(e.value) and outside.read_text() == "mine\n"


def test_a_log_is_never_opened_through_a_link(tmp_path):
    from pgolf.atomic import AtomicWriteError
    from pgolf.runlog import RunLog
    outside = tmp_path / "outside.txt"
    outside.write_text("mine\n")
    (tmp_path / "log.txt").symlink_to(outside)
    with pytest.raises(AtomicWriteError, match="symbolic link"):
        RunLog(str(tmp_path / "log.txt"))
    assert outside.read_text() == "mine\n"


def test_plot_never_writes_into_a_linked_plots_folder(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="pgolf plot needs the plot extra")
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.txt").write_text("step:1/2 train_loss:5.0 train_time:10ms step_avg:10.00ms\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / "plots").symlink_to(outside)
    assert main(["plot", str(run)]) == 2
    assert "symbolic link" in _one_line_error(capsys) and list(outside.iterdir()) == []


# ---------------------------------------------------------------- one run per folder

def test_a_second_claim_of_a_folder_in_use_is_refused(tmp_path):
    first = RunFolder.claim_new(tmp_path / "run")
    with pytest.raises(TrainingError, match="in use by another pgolf run") as e:
        RunFolder.claim_new(tmp_path / "run")
    assert str(os.getpid()) in str(e.value)
    first.release()
    RunFolder.claim_new(tmp_path / "run").release()  # free again once released


def test_the_lock_holds_across_processes(tmp_path):
    folder = RunFolder.claim_new(tmp_path / "run")
    code = ("import sys\nfrom pgolf.runfolder import RunFolder\nfrom pgolf.errors import TrainingError\n"
            "try:\n    RunFolder.claim_new(sys.argv[1])\nexcept TrainingError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=120)
    folder.release()
    assert "in use by another pgolf run" in out.stdout, out.stderr


@pytest.mark.slow
def test_two_trainings_into_one_new_folder_one_is_refused(embedded_corpus, tmp_path):
    cfg_sets = []
    for s in ["model.num_layers=2", "model.model_dim=32", "model.num_heads=2", "model.num_kv_heads=1",
              "run.iterations=6", "run.train_batch_tokens=512", "run.train_seq_len=64", "run.accum_world=1",
              "run.max_wallclock_seconds=0", "schedule.warmup_steps=0", "eval.max_tokens=512",
              "eval.batch_tokens=512", f"data.path={embedded_corpus['data_path']}",
              f"data.tokenizer_path={embedded_corpus['tokenizer_path']}", "data.train_pattern=fineweb_train_*.bin",
              "data.val_pattern=fineweb_val_*.bin", "eval.audit=false"]:
        cfg_sets += ["--set", s]
    out = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-m", "pgolf", "train", "--out", str(out), *cfg_sets,
                               "--set", f"run.seed={seed}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (1337, 7)]
    results = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, [r[1][-2000:] for r in results])
    loser = results[codes.index(2)][1]
    assert "in use by another pgolf run" in loser or "already holds a run" in loser
    seeds = [line for line in (out / "log.txt").read_text().splitlines() if line.startswith("event:config section:run")]
    assert len(seeds) == 1  # one run's log, not two interleaved


# ---------------------------------------------------------------- config.toml edited before --resume

def test_resume_refuses_edits_that_change_training_naming_them(embedded_corpus, tmp_path, monkeypatch):
    run = _stopped_run(embedded_corpus, tmp_path, monkeypatch)
    text = (run / "config.toml").read_text()
    edited = text.replace("seed = 1337", "seed = 7").replace("matrix_lr = ", "matrix_lr = 0.5 #")
    assert edited != text
    (run / "config.toml").write_text(edited)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(TrainingError, match=r"optim\.matrix_lr, run\.seed") as e:
        run_mod.train(run_mod.resume_config(str(run)), str(run), resume=True)
    assert "\n" not in str(e.value) and "undo the edit" in str(e.value)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_applies_safe_edits_and_says_so(embedded_corpus, tmp_path, monkeypatch):
    run = _stopped_run(embedded_corpus, tmp_path, monkeypatch)
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace("max_tokens = 512", "max_tokens = 256"))
    metrics = run_mod.train(run_mod.resume_config(str(run)), str(run), resume=True)
    assert metrics["val_tokens_scored"] == 256
    assert "config.toml_edits_applied_on_resume:_eval.max_tokens" in (run / "log.txt").read_text()


def test_a_foreign_checkpoint_is_one_line(embedded_corpus, tmp_path, monkeypatch):
    run = _stopped_run(embedded_corpus, tmp_path, monkeypatch)
    blob = torch.load(run / "ckpt_rank0.pt", weights_only=True)
    blob["config_toml"] = ""  # an older checkpoint: no config to compare with
    blob["model"] = {k: v[..., :1] if v.dim() else v for k, v in blob["model"].items()}
    torch.save(blob, run / "ckpt_rank0.pt")
    (run / "ckpt_rank0.pt.prev").unlink(missing_ok=True)
    with pytest.raises(TrainingError, match="does not fit this run's model") as e:
        run_mod.train(run_mod.resume_config(str(run)), str(run), resume=True)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- one-line errors

def test_exporting_a_run_that_stopped_says_why(embedded_corpus, tmp_path, monkeypatch, capsys):
    run = _stopped_run(embedded_corpus, tmp_path, monkeypatch)
    with open(run / "log.txt", "a") as fh:
        fh.write("event:train_stopped reason:error step:3 message:loss_is_nan_at_step_3\n")
    assert main(["export", str(run), "--out", str(tmp_path / "rec")]) == 2
    err = _one_line_error(capsys)
    assert "stopped before it finished" in err and "loss is nan" in err and not (tmp_path / "rec").exists()


def test_an_uncreatable_cache_is_one_line(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("PGOLF_CACHE", str(blocker / "cache"))
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "run.iterations=1"]) == 2
    assert "PGOLF_CACHE" in _one_line_error(capsys) and not (tmp_path / "run").exists()


def test_a_non_utf8_out_is_one_line(tmp_path):
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/r\xff")
    with pytest.raises(TrainingError, match="not valid UTF-8"):
        RunFolder.claim_new(bad)
    assert list(tmp_path.iterdir()) == []


def test_a_data_folder_without_shards_says_so(tmp_path):
    from pgolf.data.paths import resolve_data_paths
    cfg, _ = resolve_config("smoke", None, {}, [f"data.path={tmp_path}"])
    with pytest.raises(TrainingError, match="holds no shards"):
        resolve_data_paths(cfg)


def test_the_bundled_script_reports_a_config_error_in_one_line(tmp_path):
    script = tmp_path / "train_gpt.py"
    assert main(["bundle", "--preset", "smoke", "--out", str(script)]) == 0
    env = {**os.environ, "MATRIX_LR": "abc"}
    env.pop("PGOLF_TRACEBACK", None)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["train_gpt.py: error: optim.matrix_lr: cannot read 'abc' as float"]
    json.dumps(out.stdout)  # nothing else to check on stdout
