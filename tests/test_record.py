"""Record folders (pgolf export) on fake run folders."""

import base64
import json
import lzma
import re
import tomllib
from pathlib import Path

import pytest
import torch

from pgolf.bundle.build import bundle_for_config
from pgolf.cli import main
from pgolf.config import (apply_env, config_hash, config_to_toml, read_config_file, resolve_config,
                          shippable_config)
from pgolf.errors import RunFolderError
from pgolf.quant.artifact import OverBudgetError, pack_artifact, read_artifact, write_artifact
from pgolf.config_tree import Config
from pgolf.record import RecordError, export_record, record_slot_noncausal, scrub_local_paths

MACHINE = "/home/alice/private_data"


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"tok_emb.weight": torch.randn(64, 16, generator=g),
            "blocks.0.mlp.fc.weight": torch.randn(32, 16, generator=g),
            "blocks.0.attn.q_gain": torch.ones(4)}


def make_run(root: Path, name: str = "run", limit: int = 16_000_000, eval_mode: str = "sliding",
             val_loss: float = 1.9, seed: int = 1337, legal: bool | None = True,
             code_form: str = "plain") -> Path:
    """A finished run folder as pgolf train leaves it, without training (plain code unless asked:
    the readable file is what most checks below read)."""
    cfg, _ = resolve_config("smoke", env={})
    cfg.quant.code_form = code_form
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
    digest = config_hash(cfg)
    write_artifact(run / "model.ptz", pack_artifact(_state_dict(), cfg.quant, digest, meta={"config_toml": text}))
    (run / "log.txt").write_text(f"event:run out_dir:{MACHINE}/runs/{name}\n"
                                 f"event:config section:data path:{MACHINE}/fineweb10B_sp1024\n"
                                 "event:final val_loss:1.9 val_bpb:1.1\n")
    metrics = {"val_loss": val_loss, "val_bpb": val_loss * 0.58, "eval_mode": eval_mode, "legal": legal,
               "steps": 300, "train_time_s": 12.5, "world_size": 1, "device": "cpu", "seed": seed,
               "weights_sha256": "ab" * 32, "config_hash": digest, "model_bytes": 1, "code_bytes": 1}
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
    assert "python train_gpt.py" in readme and "SEED=1337" in readme  # the run's own launch: 1 x cpu
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
    with pytest.raises(RunFolderError, match=re.escape(f"missing {missing}")) as e:
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_compressed_export_ships_readable_source(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    sub = export_record(make_run(tmp_path), out, compressed=True)
    packed, readable = (out / "train_gpt.py").read_text(), (out / "train_gpt_readable.py").read_text()
    assert sub["bytes_code"] == len(packed.encode()) < len(readable.encode()) // 2
    blob = re.search(r'b85decode\("([^"]+)"\)', packed).group(1)
    raw = lzma.decompress(base64.b85decode(blob), lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    # The packed code is the minified bundle; the readable one beside it is the same program.
    assert raw.decode() == bundle_for_config(shippable_config(read_config_file(tmp_path / "run" / "config.toml")),
                                             "run", minify=True)
    assert "def bundle_main" in readable
    assert "train_gpt_readable.py" in (out / "README.md").read_text()


@pytest.mark.slow
def test_default_export_counts_the_compressed_file_and_ships_the_readable_one(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    sub = export_record(make_run(tmp_path, code_form="compressed"), out)
    assert (out / "train_gpt_readable.py").is_file()
    assert sub["bytes_code"] == (out / "train_gpt.py").stat().st_size < (out / "train_gpt_readable.py").stat().st_size // 2


@pytest.mark.slow
def test_minified_export_is_smaller(tmp_path: Path) -> None:
    plain = export_record(make_run(tmp_path, "a"), tmp_path / "ra")["bytes_code"]
    small = export_record(make_run(tmp_path, "b"), tmp_path / "rb", minify=True)["bytes_code"]
    assert small < plain * 0.8


@pytest.mark.slow
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


# ---------------------------------------------------------------- what the README says of the run

def _with_metrics(run: Path, **changes) -> Path:
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, **changes}))
    return run


def _reproduce_block(readme: str) -> list[str]:
    start = readme.index("Reproduce")
    return readme[start:].split("```")[1].strip().splitlines()


def _launch(line: str) -> tuple[dict[str, str], list[str]]:
    """A README command line as (environment variables, the command)."""
    words = line.split()
    env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("--"))
    return env, [w for w in words if w.split("=", 1)[0] not in env]


@pytest.mark.parametrize("world, device, data, want_cmd, want_env", [
    (1, "cpu", f"{MACHINE}/cache/pgolf/embedded_sp1024", ["python", "train_gpt.py"], {}),
    (8, "NVIDIA H100 80GB HBM3", f"{MACHINE}/fineweb10B_sp1024",
     ["torchrun", "--standalone", "--nproc_per_node=8", "train_gpt.py"],
     {"DATA_PATH": "./data/datasets/fineweb10B_sp1024", "TOKENIZER_PATH": "./data/tokenizers/tok.model"}),
    (2, "NVIDIA H100 80GB HBM3", f"{MACHINE}/my_shards",
     ["torchrun", "--standalone", "--nproc_per_node=2", "train_gpt.py"], {"DATA_PATH": "path/to/my_shards"}),
])
def test_readme_reproduces_the_run_that_made_it(tmp_path: Path, world, device, data, want_cmd, want_env) -> None:
    run = _with_metrics(make_run(tmp_path, seed=7), world_size=world, device=device, data_path=data)
    export_record(run, tmp_path / "rec", name="n", author="a")
    readme = (tmp_path / "rec" / "README.md").read_text()
    block = _reproduce_block(readme)
    env, cmd = _launch(block[-1])
    assert cmd == want_cmd
    assert {k: env[k] for k in want_env} == want_env
    # The variables, read as train_gpt.py reads them, give the run's seed and device.
    cfg = Config()
    assert apply_env(cfg, env) == []
    assert cfg.run.seed == 7
    assert cfg.run.device == ("cpu" if device == "cpu" else "auto")
    assert MACHINE not in readme and f"{world} x {device}" in readme
    embedded = "embedded" in data
    assert (block[:-1] == ["pgolf data prepare"]) == embedded and ("embedded Shakespeare" in readme) == embedded
    assert ("fineweb" in readme.lower()) == ("fineweb" in data)


def test_export_says_when_name_and_author_are_empty(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path)
    assert main(["export", str(run), "--out", str(tmp_path / "r1")]) == 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "name and author" in err and "--name" in err and "--author" in err
    assert "name/author not given" in (tmp_path / "r1" / "README.md").read_text()
    assert main(["export", str(run), "--out", str(tmp_path / "r2"), "--name", "n"]) == 0
    assert "empty author" in capsys.readouterr().err
    readme = (tmp_path / "r2" / "README.md").read_text()
    assert "author not given" in readme and "name/author" not in readme
    assert main(["export", str(run), "--out", str(tmp_path / "r3"), "--name", "n", "--author", "a"]) == 0
    assert capsys.readouterr().err == ""
    assert "not given" not in (tmp_path / "r3" / "README.md").read_text()


def test_export_says_when_the_run_stopped_early(tmp_path, capsys):
    run = make_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.update(steps=5, steps_planned=300, stopped_early=True, stop_reason="wallclock_cap")
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["export", str(run), "--out", str(tmp_path / "rec"), "--name", "n", "--author", "a"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: the run stopped at step 5 of 300 (wallclock_cap); submission.json and the README say so"]
    sub = json.loads((tmp_path / "rec" / "submission.json").read_text())
    assert sub["stopped_early"] is True and sub["steps_planned"] == 300
    assert "**Stopped early:** training ended at step 5 of the 300" in (tmp_path / "rec" / "README.md").read_text()
    full = make_run(tmp_path, name="full")
    assert main(["export", str(full), "--out", str(tmp_path / "rec2"), "--name", "n", "--author", "a"]) == 0
    assert capsys.readouterr().err == ""
    assert json.loads((tmp_path / "rec2" / "submission.json").read_text())["stopped_early"] is False
