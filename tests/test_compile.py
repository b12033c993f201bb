"""torch.compile on CPU (inductor): the record training step and the eval forward.

Slow (each graph costs seconds on 2 cores) but the only place CI compiles what a GPU run
compiles: a graph break or a recompile here is one there too.
"""

import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import pgolf.run as run_mod
from pgolf.config import finalize_config
from pgolf.config_tree import Config
from pgolf.dist import Comm
from pgolf.eval.runner import EvalMode, evaluate
from pgolf.model.build import build_model
from pgolf.runlog import parse_event

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import tiny  # noqa: E402

pytestmark = pytest.mark.slow


def test_compiled_record_training_has_no_graph_break_and_no_recompile_after_priming(
        embedded_corpus, tmp_path, monkeypatch):
    torch._dynamo.reset()
    counters.clear()
    seen = {}
    real_loop = run_mod.run_loop

    def watched_loop(*args, **kwargs):
        seen["before"] = counters["stats"]["unique_graphs"]
        reason = real_loop(*args, **kwargs)
        seen["after"] = counters["stats"]["unique_graphs"]
        return reason

    monkeypatch.setattr(run_mod, "run_loop", watched_loop)
    cfg = tiny(embedded_corpus, "model.arch=record", "model.compile=true", "run.iterations=8",
               "schedule.warmup_steps=1", "schedule.warmdown_mode=iters", "schedule.warmdown_iters=8",
               "quant.late_qat_threshold=0.5", "quant.matrix_bits=6", "eval.audit=false")
    metrics = run_mod.train(cfg, str(tmp_path / "run"))
    assert dict(counters["graph_break"]) == {}  # fullgraph=True would have raised anyway
    assert seen["before"] > 0 and seen["after"] == seen["before"], seen
    events = [parse_event(ln) for ln in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    assert any(ev.get("event") == "late_qat_on" for ev in events)  # the switch happened in the loop
    assert any(ev.get("event") == "priming_done" and ev.get("qat_graph") == "True" for ev in events)
    assert metrics["steps"] == 8 and torch.isfinite(torch.tensor(metrics["val_bpb"]))


def test_compiled_eval_forward_equals_eager():
    torch.manual_seed(0)
    cfg = Config()
    m = cfg.model
    m.arch, m.vocab_size, m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = "record", 64, 2, 32, 2, 1
    m.bigram_vocab_size, m.bigram_dim, m.ve_dim = 32, 8, 8
    cfg.run.train_seq_len = 32
    finalize_config(cfg)
    model = build_model(cfg, torch.device("cpu")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tokens = torch.randint(0, 64, (32 * 12 + 1,))
    tables = (torch.ones(64, dtype=torch.int16), torch.zeros(64, dtype=torch.bool), torch.zeros(64, dtype=torch.bool))
    for mode in ("plain", "sliding", "causal-slot"):
        ecfg = EvalMode.parse(mode).eval_config(cfg.eval)
        ecfg.batch_seqs, ecfg.stride, ecfg.slot_steps = 4, 16, 2
        eager = evaluate(model, tokens, tables, ecfg, Comm(), torch.device("cpu"))
        compiled = evaluate(model, tokens, tables, ecfg, Comm(), torch.device("cpu"), compile=True)
        assert abs(eager["val_bpb"] - compiled["val_bpb"]) < 1e-5, mode
