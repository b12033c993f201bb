"""Training-loop pieces: priming restore, late QAT under torch.compile, NaN stop, budget refusal."""

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import tiny  # noqa: E402

from pgolf.config import finalize_config, resolve_config
from pgolf.config_tree import Config
from pgolf.data.loader import DistributedTokenLoader
from pgolf.errors import TrainingError
from pgolf.model.build import build_model
from pgolf.optim.builder import build_optimizers
from pgolf.quant.artifact import OverBudgetError
from pgolf.quant.fake_quant import attach_late_qat
from pgolf.run import train
from pgolf.runlog import RunLog, parse_event
from pgolf.train import RunState, check_finite, prime


def test_priming_restores_weights_optimizer_and_data_exactly(embedded_corpus):
    torch.manual_seed(0)
    cfg = tiny(embedded_corpus, "model.arch=record")
    model = build_model(cfg, torch.device("cpu"))
    opt = build_optimizers(model, cfg.optim)
    loader = DistributedTokenLoader(embedded_corpus["train_pattern"])
    loader.next_batch(512, 64, 1)  # a non-trivial data position
    before = copy.deepcopy(model.state_dict()), loader.state()
    prime(model, model, opt, loader, cfg, 1, torch.device("cpu"), RunLog(None, echo=False))
    after = model.state_dict()
    assert all(torch.equal(before[0][k], after[k]) for k in after)
    assert loader.state() == before[1]
    assert not opt.muon.state and not opt.adam.state  # no momentum left from priming
    # The primed and an unprimed twin take the identical next step.
    twin = build_model(cfg, torch.device("cpu"))
    twin.load_state_dict(before[0])
    opt2 = build_optimizers(twin, cfg.optim)
    for m, o in ((model, opt), (twin, opt2)):
        x, y = DistributedTokenLoader(embedded_corpus["train_pattern"]).next_batch(512, 64, 1)
        m(x, y).backward()
        o.reduce_and_step(m, 0.0)
    assert all(torch.equal(model.state_dict()[k], twin.state_dict()[k]) for k in after)


@pytest.mark.slow
def test_late_qat_switch_under_compile_uses_two_primed_graphs():
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    torch._dynamo.reset()
    cfg = Config()
    m = cfg.model
    m.arch, m.vocab_size, m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = "record", 64, 2, 32, 2, 1
    m.bigram_vocab_size, m.bigram_dim, m.ve_dim = 32, 8, 8
    finalize_config(cfg)
    model = build_model(cfg, torch.device("cpu"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    qat = attach_late_qat(model, 4, "matrices")
    model.rotary(16, torch.device("cpu"), torch.float32)  # as build_model does for the run's lengths
    compiled = torch.compile(model.forward_logits, fullgraph=True, dynamic=False)
    ids = torch.randint(0, 64, (2, 16))
    off = compiled(ids)  # priming: QAT off ...
    assert torch.allclose(off, model.forward_logits(ids), atol=1e-5)
    qat.active = True  # ... and QAT on, as prime() does when QAT is configured
    on = compiled(ids)
    assert not torch.allclose(on, off, atol=1e-3)
    assert torch.allclose(on, model.forward_logits(ids), atol=1e-5)
    graphs = counters["stats"]["unique_graphs"]
    for active in (False, True, False, True):  # the timed loop: no compilation any more
        qat.active = active
        out = compiled(ids)
        assert torch.allclose(out, on if active else off, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == graphs


def test_nan_loss_stops_with_step_and_last_finite_loss(tmp_path):
    st = RunState()
    check_finite(3.5, st, str(tmp_path))
    st.step = 41
    with pytest.raises(TrainingError, match=r"nan at step 42 \(last finite loss 3.5000\)") as e:
        check_finite(float("nan"), st, str(tmp_path))
    assert "lower optim.matrix_lr" in str(e.value) and "\n" not in str(e.value)


def test_diverging_run_keeps_its_log(embedded_corpus, tmp_path):
    cfg = tiny(embedded_corpus, "optim.scalar_lr=1e30", "optim.tied_embed_lr=1e30", "optim.matrix_lr=1e30")
    with pytest.raises(TrainingError, match="train loss is"):
        train(cfg, str(tmp_path / "run"))
    assert "event:run" in (tmp_path / "run" / "log.txt").read_text()


def test_over_budget_artifact_is_refused_but_weights_kept(embedded_corpus, tmp_path):
    cfg = tiny(embedded_corpus, "quant.max_artifact_bytes=1000", "run.iterations=2")
    with pytest.raises(OverBudgetError, match="over the"):
        train(cfg, str(tmp_path / "run"), code_bytes=500)
    assert (tmp_path / "run" / "final_state.pt").is_file()
    assert not (tmp_path / "run" / "model.ptz").exists()
    lines = [parse_event(ln) for ln in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    assert any(ev.get("event") == "train_done" for ev in lines)


def test_corrupt_checkpoint_falls_back_then_fails_clearly(embedded_corpus, tmp_path):
    from pgolf.checkpoint import load_checkpoint, save_checkpoint
    cfg = tiny(embedded_corpus)
    model = build_model(cfg, torch.device("cpu"))
    opt = build_optimizers(model, cfg.optim)
    loader = DistributedTokenLoader(embedded_corpus["train_pattern"])
    st = RunState()
    for step in (4, 8):
        st.step = step
        save_checkpoint(str(tmp_path), 0, model, opt, loader, None, None, st)
    good = tmp_path / "ckpt_rank0.pt"
    good.write_bytes(good.read_bytes()[:100])  # a torn write the atomic rename would have prevented
    assert load_checkpoint(str(tmp_path), 0)["run"]["step"] == 4  # the previous one survives
    (tmp_path / "ckpt_rank0.pt.prev").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="no readable checkpoint") as e:
        load_checkpoint(str(tmp_path), 0)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_info_reports_record_param_count(capsys):
    import json

    from pgolf.cli import main
    assert main(["info", "--preset", "record_1128", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 26_928_220


def test_bundle_default_data_path_finds_prepared_corpus(embedded_corpus, monkeypatch, tmp_path):
    from pgolf.data.paths import default_data_path
    monkeypatch.chdir(tmp_path)
    cfg, _ = resolve_config("smoke", None, {}, [])
    cfg.data.cache_dir = str(__import__("pathlib").Path(embedded_corpus["data_path"]).parent)
    assert default_data_path(cfg) == embedded_corpus["data_path"]
    cfg.data.cache_dir = str(tmp_path / "empty")
    assert default_data_path(cfg) == ""


def test_quant_check_and_audit_show_progress_with_eta(embedded_corpus, tmp_path):
    from pgolf.eval.legality import audit
    metrics = train(tiny(embedded_corpus), str(tmp_path / "run"), auditor=audit)
    assert metrics["legal"] is True
    lines = (tmp_path / "run" / "log.txt").read_text().splitlines()
    plain = [ln for ln in lines if ln.startswith("eval:plain windows:")]
    audit = [ln for ln in lines if ln.startswith("audit:causality run:")]
    assert len(plain) >= 2 and all("eta:" in ln for ln in plain)  # before and after quantization
    assert audit and all("eta:" in ln for ln in audit) and audit[-1].split()[1].split(":")[1].split("/")[0] \
        == audit[-1].split()[1].split("/")[1]


def test_without_an_auditor_legality_is_unknown_not_assumed(embedded_corpus, tmp_path):
    """What a generated train_gpt.py does: it does not ship the audit, and says so."""
    metrics = train(tiny(embedded_corpus), str(tmp_path / "run"))
    assert metrics["legal"] is None and "pgolf audit" in metrics["audit"]


def test_progressive_recurrence_switches_the_loop_on_mid_run(embedded_corpus, tmp_path):
    cfg = tiny(embedded_corpus, "model.arch=record", "model.num_loops=1", "model.loop_start=0",
               "model.loop_end=1", "model.loop_enable_at=0.5", "run.iterations=6", "run.train_log_every=1")
    train(cfg, str(tmp_path / "run"))
    events = [parse_event(ln) for ln in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    on = [ev for ev in events if ev.get("event") == "looping_on"]
    assert len(on) == 1 and on[0]["step"] == "3"  # 3 of 6 steps = the configured half
