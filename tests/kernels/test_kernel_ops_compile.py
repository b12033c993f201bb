"""The kernels behind hw.py's switches in a real model: torch.compile(fullgraph=True) traces a
training step (forward and backward) through both custom ops with their fake implementations,
the compiled step runs the kernels (Triton's interpreter on a CPU) and its loss and gradients
equal the eager model's with the switches off. The switches: off and auto on a CPU keep the
eager path; on routes through the ops; on without triton on CUDA refuses."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf.config import finalize_config
from pgolf.config_tree import Config
from pgolf.errors import PgolfError
from pgolf.hw import fused_loss_function, fused_mlp_function
from pgolf.model.build import build_model


def _cfg(fused: str) -> Config:
    cfg = Config()
    m = cfg.model
    m.arch, m.vocab_size, m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = "record", 100, 2, 32, 2, 1
    m.bigram_vocab_size, m.bigram_dim, m.ve_dim, m.mlp_mult = 32, 8, 8, 3.0
    m.fused_ce = m.fused_mlp = fused
    m.logit_softcap = 2.0  # with the scaled-up embedding below, the cap bends most logits
    cfg.run.train_seq_len = cfg.eval.seq_len = 16
    cfg.run.device = "cpu"
    finalize_config(cfg)
    return cfg


def test_switches_choose_the_path_hw_decides():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for pick in (fused_loss_function, fused_mlp_function):
        assert pick("off", cpu) is None and pick("off", cuda) is None
        assert pick("auto", cpu) is None  # no CUDA: eager, whatever is installed
        assert pick("on", cpu) is not None
    model = build_model(_cfg("off"), cpu)
    assert model.fused_loss is None and all(b.mlp.fused_up is None for b in model.blocks)


def test_on_without_triton_on_cuda_refuses(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    with pytest.raises(PgolfError, match=r"fused_ce=on needs triton \(pip install triton\)"):
        fused_loss_function("on", torch.device("cuda"))
    assert fused_mlp_function("auto", torch.device("cuda")) is None


def test_kernels_without_a_source_file_stay_off_on_cuda(monkeypatch):
    """The counted train_gpt.py runs exec'd from a string, where @triton.jit cannot read the
    kernels' source: auto keeps the eager path there and on refuses in one line."""
    from pgolf import hw
    namespace = {}
    exec("def softcap_ce_ops():\n    pass\n", namespace)  # noqa: S102 - code without a file, as the counted form
    monkeypatch.setattr(hw, "softcap_ce_ops", namespace["softcap_ce_ops"])
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    cuda = torch.device("cuda")
    assert fused_mlp_function("auto", cuda) is None
    with pytest.raises(PgolfError, match="fused_ce=on needs a source file"):
        fused_loss_function("on", cuda)


def _step(forward, model, ids, targets):
    model.zero_grad(set_to_none=True)
    loss = forward(ids, targets)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.triton
@pytest.mark.slow  # ~10 s on 2 cores: dynamo + AOT autograd, then the interpreter
def test_compiled_step_traces_both_ops_without_a_graph_break_and_equals_eager():
    pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]')")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1 (tests/conftest.py sets it first)")
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    eager = build_model(_cfg("off"), device)
    with torch.no_grad():
        eager.tok_emb.weight.mul_(300.0)  # logits of a few units: far from the linear range of tanh
    fused = build_model(_cfg("on"), device)
    fused.load_state_dict(eager.state_dict())
    assert fused.fused_loss is not None and all(b.mlp.fused_up is not None for b in fused.blocks)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (2, 16), generator=g).to(device)
    targets = torch.randint(0, 100, (2, 16), generator=g).to(device)

    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    # The forward compiled as training compiles it (hw.maybe_compile: fullgraph=True, so a graph
    # break raises instead of splitting it); AOT autograd traces the backward from it.
    compiled = torch.compile(fused, dynamic=False, fullgraph=True,
                             backend=aot_autograd(fw_compiler=record, bw_compiler=record))
    loss_f, grads_f = _step(compiled, fused, ids, targets)
    loss_e, grads_e = _step(eager, eager, ids, targets)
    forward, backward = graphs[0], graphs[-1]
    assert "pgolf.softcap_ce_rows" in forward and "pgolf.linear_leaky2" in forward
    assert "pgolf.softcap_ce_rows_backward" in backward and "pgolf.linear_leaky2_backward" in backward
    assert torch.allclose(loss_f, loss_e, rtol=1e-5, atol=1e-6), (loss_f, loss_e)
    assert grads_f.keys() == grads_e.keys()
    for name, g_e in grads_e.items():
        assert torch.allclose(grads_f[name], g_e, rtol=1e-3, atol=1e-6), (name, (grads_f[name] - g_e).abs().max())


_NO_TRITON = r'''
import sys
sys.modules["triton"] = None  # as if not installed: importing it raises ImportError
import torch
from pgolf.config import finalize_config
from pgolf.config_tree import Config
from pgolf.model.build import build_model
for switch in ("auto", "on"):
    cfg = Config()
    m = cfg.model
    m.arch, m.vocab_size, m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = "record", 64, 2, 32, 2, 1
    m.bigram_vocab_size, m.bigram_dim, m.ve_dim = 16, 8, 8
    m.fused_ce = m.fused_mlp = switch
    cfg.run.train_seq_len = cfg.eval.seq_len = 8
    finalize_config(cfg)
    model = build_model(cfg, torch.device("cpu"))
    ids = torch.randint(0, 64, (2, 8))
    model(ids, ids).backward()
    print(switch, model.fused_loss is not None, "triton" in sys.modules and sys.modules["triton"] is not None)
'''


@pytest.mark.slow  # a fresh interpreter importing torch: ~8 s on 2 cores
def test_without_triton_a_cpu_model_trains_on_the_eager_reference():
    """triton is no runtime dependency: auto keeps the eager path, on runs the ops' eager fallback."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    r = subprocess.run([sys.executable, "-c", _NO_TRITON], env=env, capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["auto", "False", "False", "on", "True", "False"]
