"""End to end through the command line: train, resume after a kill, torchrun, bundle, audit.

These run real (tiny) trainings in subprocesses, so each test shares one corpus and keeps
the model at 2 layers x 32 wide.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]  # real trainings in subprocesses

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["model.num_layers=2", "model.model_dim=32", "model.num_heads=2", "model.num_kv_heads=1",
        "model.bigram_dim=8", "model.ve_dim=8", "model.bigram_vocab_size=128",
        "run.iterations=12", "run.train_batch_tokens=1024", "run.train_seq_len=64",
        "run.max_wallclock_seconds=0", "run.train_log_every=4", "schedule.warmup_steps=2",
        "schedule.warmdown_iters=6", "eval.max_tokens=2048", "eval.batch_tokens=2048",
        "eval.audit_tokens=320", "eval.batch_seqs=8"]


def env_for(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGOLF_", "RANK", "WORLD_SIZE"))}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra or {})
    return env


def pgolf(args, corpus, extra_env=None, check=True, launcher=None):
    data = [f"data.path={corpus['data_path']}", f"data.tokenizer_path={corpus['tokenizer_path']}",
            f"data.train_pattern={os.path.basename(corpus['train_pattern'])}",
            f"data.val_pattern={os.path.basename(corpus['val_pattern'])}"]
    sets = [a for s in TINY + data for a in ("--set", s)] if "--resume" not in args else []
    cmd = (launcher or [sys.executable, "-m", "pgolf"]) + args + sets
    res = subprocess.run(cmd, env=env_for(extra_env), capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def metrics(run_dir):
    return json.loads((Path(run_dir) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, embedded_corpus):
    out = tmp_path_factory.mktemp("runs") / "base"
    pgolf(["train", "--preset", "smoke", "--out", str(out), "--set", "run.checkpoint_every=4"], embedded_corpus)
    return out


def test_train_writes_run_folder_and_metrics(baseline_run):
    m = metrics(baseline_run)
    for key in ("val_loss", "val_bpb", "steps", "train_time_s", "step_avg_ms", "tokens_per_s", "model_bytes",
                "code_bytes", "artifact_bytes", "world_size", "device", "weights_sha256"):
        assert key in m, key
    assert m["artifact_bytes"] == m["model_bytes"] + m["code_bytes"]
    assert m["steps"] == 12 and m["world_size"] == 1 and m["code_bytes"] > 10_000
    assert 0 < m["val_bpb"] < 20
    log = (baseline_run / "log.txt").read_text()
    assert "step:4/12" in log and "tokens_per_s:" in log and "eta_s:" in log
    for f in ("config.toml", "model.ptz", "log.txt"):
        assert (baseline_run / f).is_file()


def test_existing_run_is_never_overwritten(baseline_run, embedded_corpus):
    res = pgolf(["train", "--preset", "smoke", "--out", str(baseline_run)], embedded_corpus, check=False)
    assert res.returncode == 2 and "already holds a run" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_kill_and_resume_gives_identical_weights(baseline_run, embedded_corpus, tmp_path):
    out = tmp_path / "killed"
    res = pgolf(["train", "--preset", "smoke", "--out", str(out), "--set", "run.checkpoint_every=4"],
                embedded_corpus, extra_env={"PGOLF_FAULT_AFTER_STEP": "8"}, check=False)
    assert res.returncode == -9, res.stderr[-2000:]
    assert not (out / "metrics.json").exists()
    pgolf(["train", "--resume", str(out)], embedded_corpus)
    assert "event:resumed step:8" in (out / "log.txt").read_text()
    assert metrics(out)["weights_sha256"] == metrics(baseline_run)["weights_sha256"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, embedded_corpus):
    out = tmp_path_factory.mktemp("runs") / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pgolf"]
    pgolf(["train", "--preset", "smoke", "--out", str(out)], embedded_corpus, launcher=launcher)
    return out


@pytest.mark.multiproc
def test_torchrun_two_processes_match_one(baseline_run, ddp_run):
    m2, m1 = metrics(ddp_run), metrics(baseline_run)
    assert m2["world_size"] == 2
    # Same global batch (accum_world=2): 1 proc x 2 micro-steps == 2 procs x 1. Muon's bf16
    # Newton-Schulz on differently padded shards allows small drift only.
    assert abs(m2["val_loss"] - m1["val_loss"]) < 2e-3


@pytest.mark.multiproc
def test_two_node_torchrun_matches_one_node(baseline_run, ddp_run, embedded_corpus, tmp_path):
    """`torchrun --nnodes 2`: two launchers (one process each) meet at a c10d rendezvous, as two
    machines would. They train exactly the weights of two processes on one node, and the same
    global batch in one process gives the same model up to reduction order."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "nodes"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=pgolf-test", "-m", "pgolf"]
    data = [f"data.path={embedded_corpus['data_path']}", f"data.tokenizer_path={embedded_corpus['tokenizer_path']}",
            f"data.train_pattern={os.path.basename(embedded_corpus['train_pattern'])}",
            f"data.val_pattern={os.path.basename(embedded_corpus['val_pattern'])}"]
    cmd = launcher + ["train", "--preset", "smoke", "--out", str(out)] + [a for s in TINY + data for a in ("--set", s)]
    nodes = [subprocess.Popen(cmd, env=env_for(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [n.communicate(timeout=300) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], [r[1][-2000:] for r in results]
    m2, m1 = metrics(out), metrics(baseline_run)
    assert m2["world_size"] == 2 and m2["steps"] == m1["steps"]
    assert m2["weights_sha256"] == metrics(ddp_run)["weights_sha256"]
    assert abs(m2["val_loss"] - m1["val_loss"]) < 2e-3


def test_bundle_runs_standalone_and_matches_package(baseline_run, embedded_corpus, tmp_path):
    bundle = tmp_path / "train_gpt.py"
    pgolf(["bundle", "--preset", "smoke", "--out", str(bundle)], embedded_corpus)
    tree = ast.parse(bundle.read_text())
    nodes = list(ast.walk(tree))
    everywhere = {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import) for a in n.names}
    everywhere |= {n.module.split(".")[0] for n in nodes if isinstance(n, ast.ImportFrom) and n.module}
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert "pgolf" not in everywhere
    # Optional libraries (FA3, zstd, brotli) may only be imported lazily.
    assert top - set(sys.stdlib_module_names) <= {"torch", "numpy", "sentencepiece"}
    env = env_for({"DATA_PATH": embedded_corpus["data_path"], "TOKENIZER_PATH": embedded_corpus["tokenizer_path"]})
    env.pop("PYTHONPATH")
    # Block any import of pgolf: the file must be self-contained.
    runner = ("import runpy, sys; sys.modules['pgolf'] = None; "
              "runpy.run_path('train_gpt.py', run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", runner], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("val_bpb:")][-1]
    got = float(line.split()[0].split(":")[1])
    assert got == pytest.approx(metrics(baseline_run)["val_bpb"], abs=1e-6)


@pytest.mark.parametrize("mode, ok", [("sliding", True), ("ttt", True), ("causal-slot", True),
                                      ("ttt+causal-slot", True), ("slot", False), ("ttt+slot", False)])
def test_audit_cli_verdicts(baseline_run, embedded_corpus, mode, ok):
    res = subprocess.run([sys.executable, "-m", "pgolf", "audit", str(baseline_run), "--mode", mode],
                         env=env_for(), capture_output=True, text=True, timeout=300)
    assert (res.returncode == 0) == ok, res.stdout + res.stderr
    assert "causality" in res.stdout and "self_test=PASS" in res.stdout and "causality margin:" in res.stdout


RECORD_TINY = ["--preset", "record_1128", "--set", "model.compile=false", "--set", "model.ve_layers=-1",
               "--set", "run.accum_world=2", "--set", "schedule.swa_every=2", "--set", "eval.stride=16",
               "--set", "eval.seq_len=64", "--set", "eval.ttt_chunk_tokens=512", "--set", "eval.ttt_batch_seqs=4",
               "--set", "eval.ttt_epochs=1", "--set", "run.checkpoint_every=4", "--set", "eval.max_tokens=1024"]


@pytest.fixture(scope="module")
def record_run(tmp_path_factory, embedded_corpus):
    out = tmp_path_factory.mktemp("runs") / "record"
    pgolf(["train", "--out", str(out)] + RECORD_TINY, embedded_corpus)
    return out


def test_record_preset_runs_the_whole_stack(record_run):
    m = metrics(record_run)
    assert m["eval_mode"] == "ttt+slot" and m["eval_causal"] is False and m["legal"] is False
    assert m["export_weights"] == "ema" and m["artifact_bytes"] == m["model_bytes"] + m["code_bytes"]
    log = (record_run / "log.txt").read_text()
    assert "NON-CAUSAL" in log and "event:quant_round_trip" in log
    cfg = (record_run / "config.toml").read_text()
    assert 'compressor = "lzma"' in cfg and "matrix_bits = 6" in cfg


def test_record_kill_and_resume_with_ema_swa_qat(record_run, embedded_corpus, tmp_path):
    out = tmp_path / "killed"
    res = pgolf(["train", "--out", str(out)] + RECORD_TINY, embedded_corpus,
                extra_env={"PGOLF_FAULT_AFTER_STEP": "8"}, check=False)
    assert res.returncode == -9, res.stderr[-2000:]
    pgolf(["train", "--resume", str(out)], embedded_corpus)
    assert metrics(out)["weights_sha256"] == metrics(record_run)["weights_sha256"]


def test_record_bundle_without_its_unused_parts_trains_identically(record_run, embedded_corpus, tmp_path):
    # The record's train_gpt.py leaves out GPTQ, LQER, LoRA/phased TTT and causal SLOT (pgolf.parts);
    # it keeps checkpoints (the preset writes them) and signal handling.
    bundle = tmp_path / "train_gpt.py"
    pgolf(["bundle", "--out", str(bundle), "--minify"] + RECORD_TINY, embedded_corpus)
    text = bundle.read_text()
    assert "SHIPPED_PARTS = ('checkpoints', 'signals')" in text and "def eval_lora_ttt(" not in text
    env = env_for({"DATA_PATH": embedded_corpus["data_path"], "TOKENIZER_PATH": embedded_corpus["tokenizer_path"]})
    env.pop("PYTHONPATH")
    runner = "import runpy, sys; sys.modules['pgolf'] = None; runpy.run_path('train_gpt.py', run_name='__main__')"
    res = subprocess.run([sys.executable, "-c", runner], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [p for p in (tmp_path / "runs").iterdir() if (p / "metrics.json").is_file()]
    assert len(runs) == 1
    got, want = metrics(runs[0]), metrics(record_run)
    assert got["weights_sha256"] == want["weights_sha256"] and got["val_bpb"] == want["val_bpb"]


@pytest.mark.multiproc
def test_torchrun_record_arch_two_processes(embedded_corpus, tmp_path):
    out = tmp_path / "ddp_record"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pgolf"]
    pgolf(["train", "--preset", "smoke", "--out", str(out), "--set", "model.arch=record"], embedded_corpus,
          launcher=launcher)
    m = metrics(out)
    assert m["world_size"] == 2 and m["legal"] is True and m["steps"] == 12


def test_eval_cli_reevaluates_with_other_settings(baseline_run):
    res = subprocess.run([sys.executable, "-m", "pgolf", "eval", str(baseline_run), "--set", "eval.stride=32"],
                         env=env_for(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["mode"] == "sliding" and 0 < out["val_bpb"] < 20
    # Sliding windows see more context than the plain windows of the training run's final eval.
    assert out["val_bpb"] < metrics(baseline_run)["val_bpb"] + 1e-9


def test_data_inspect_cli(embedded_corpus):
    shard = sorted(Path(embedded_corpus["data_path"]).glob("fineweb_val_*.bin"))[0]
    res = subprocess.run([sys.executable, "-m", "pgolf", "data", "inspect", str(shard), "--tokenizer",
                          embedded_corpus["tokenizer_path"], "-n", "8"], env=env_for(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "20240520" in res.stdout, res.stdout + res.stderr


def test_export_ships_exactly_the_code_bytes_the_run_counted(baseline_run, tmp_path):
    res = subprocess.run([sys.executable, "-m", "pgolf", "export", str(baseline_run), "--out", str(tmp_path / "rec")],
                         env=env_for(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    sub = json.loads((tmp_path / "rec" / "submission.json").read_text())
    m = metrics(baseline_run)
    assert sub["bytes_code"] == m["code_bytes"] == (tmp_path / "rec" / "train_gpt.py").stat().st_size
    assert sub["bytes_total"] == m["artifact_bytes"]
    assert str(Path(m["data_path"])) not in (tmp_path / "rec" / "train_gpt.py").read_text()
