"""The record_1855 preset against record #1855's train_gpt.py (read for facts, not copied).

Checked: the parameter count, every tensor name and shape (the record's own names, so its
state dict loads without a mapping), and the logits of the script's own GPT, saved by
bench/sidebyside/forward_fixture.py in tests/fixtures/record_1855_forward.pt (a tiny width with
the record's depth, loops, lanes and gates; a causal row and a three-document row, loop off and
on), against pgolf's model holding the same weights. The test never imports the script; the
fixture names the script's sha256 and the command that wrote it. Not checked: FA3 itself (the
fixture ran the script with SDPA in its place) and the fused training kernels.
"""

import math
from pathlib import Path

import torch

from pgolf.config import resolve_config
from pgolf.model.gpt import GPT, count_params

# 4,194,304 embedding + 31,719,424 banks + 11 x 2,152 per-block + 8,192 skip weights/gates
# + 66 parallel lambdas + 13 SmearGate, as the script's GPT.__init__ allocates them.
RECORD_1855_PARAMS = 35_945_671


def reference_shapes(vocab, d, layers, heads, kv_heads, mlp_mult, window, skips):
    """Tensor name -> shape of the script's model (RANDOM_ADAPTER off, SMEAR_GATE/SKIP_GATES/
    SPARSE_ATTN_GATE on, PARALLEL_START_LAYER > 0)."""
    kv = d // heads * kv_heads
    hidden = int(mlp_mult * d)
    out = {"tok_emb.weight": (vocab, d), "qo_bank": (2 * layers, d, d), "kv_bank": (2 * layers, kv, d),
           "mlp_up_bank": (layers, hidden, d), "mlp_down_bank": (layers, d, hidden),
           "skip_weights": (skips, d), "skip_gates": (skips, d),
           "parallel_post_lambdas": (layers, 2, 2), "parallel_resid_lambdas": (layers, 2),
           "smear_gate.weight": (1, window), "smear_lambda": (1,)}
    for i in range(layers):
        out.update({f"blocks.{i}.attn.q_gain": (heads,), f"blocks.{i}.attn.attn_gate_w": (heads, window),
                    f"blocks.{i}.attn_scale": (d,), f"blocks.{i}.mlp_scale": (d,),
                    f"blocks.{i}.resid_mix": (2, d)})
    return out


def test_record_1855_parameter_count_and_tensor_names():
    cfg, _ = resolve_config("record_1855", env={})
    with torch.device("meta"):
        model = GPT(cfg.model)
    assert count_params(model) == RECORD_1855_PARAMS
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == reference_shapes(8192, 512, 11, 8, 4, 4.0, 12, 8)
    assert sum(math.prod(s) for s in shapes.values()) == RECORD_1855_PARAMS


# ---------------------------------------------------------------- the script's own output

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "record_1855_forward.pt"


def test_record_1855_forward_equals_the_record_scripts_saved_logits():
    # bench/sidebyside/forward_fixture.py ran the record's own GPT (imported unmodified, SDPA
    # in place of FA3) at a tiny width and saved its weights, inputs and logits; pgolf's
    # record_1855 model at the same width holds those weights under the same names.
    fx = torch.load(FIXTURE, weights_only=True)
    assert len(fx["record_script_sha256"]) == 64 and "forward_fixture.py" in fx["command"]
    cfg, _ = resolve_config("record_1855", env={}, sets=fx["pgolf_sets"])
    model = GPT(cfg.model).eval()
    model.load_state_dict(fx["state_dict"])  # strict: every name and shape the script's
    assert set(fx["logits"]) == {"causal_loop0", "causal_loop1", "docs_loop0", "docs_loop1"}
    for key, want in fx["logits"].items():
        # The docs row holds BOS tokens: pgolf splits attention at them from the ids alone,
        # the script was given the same split as cu_seqlens.
        ids = fx["plain_ids"] if key.startswith("causal") else fx["docs_ids"]
        model.looping_active = key.endswith("loop1")
        with torch.no_grad():
            got = model.forward_logits(ids)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
    # The loop and the documents change the output: each case checks a path of its own.
    lg = fx["logits"]
    assert (lg["causal_loop1"] - lg["causal_loop0"]).abs().max() > 1e-2
    assert (lg["docs_loop0"] - lg["causal_loop0"]).abs().max() > 1e-2
