"""Frontier model switches: each against a plain path that computes the same thing."""

import pytest
import torch

from pgolf.config import ConfigError, finalize_config, resolve_config
from pgolf.config_tree import Config
from pgolf.model.attention import causal_attention, doc_layout
from pgolf.model.gpt import GPT
from pgolf.model.stack import layer_schedule, looping_due

V = 64


def small_cfg(**over) -> Config:
    cfg = Config()
    m = cfg.model
    m.arch, m.vocab_size, m.num_layers, m.model_dim = "record", V, 4, 32
    m.num_heads, m.num_kv_heads, m.mlp_mult = 4, 2, 2.0
    m.bigram_vocab_size, m.bigram_dim, m.ve_dim, m.rope_train_len, m.rope_dims = 48, 8, 8, 8, 4
    m.gate_window = 6
    for k, v in over.items():
        setattr(m, k, v)
    finalize_config(cfg)
    return cfg


def jittered(cfg: Config, banked: bool | None = None, seed: int = 0) -> GPT:
    """A model whose every parameter carries signal (zero inits broken)."""
    torch.manual_seed(seed)
    model = GPT(cfg.model, banked=banked)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def logits(model, ids):
    with torch.no_grad():
        return model.forward_logits(ids)


# ---------------------------------------------------------------- depth recurrence

LOOP = dict(num_loops=1, loop_start=1, loop_end=2, ln_scale=False, ve_enabled=False, xsa_last_n=1)


@pytest.mark.parametrize("untied", [False, True])
def test_recurrence_equals_unrolled_layers(untied):
    looped = jittered(small_cfg(**LOOP, loop_untied_mlp=untied), banked=False)
    order = [b for b, _ in layer_schedule(looped.cfg, looping=True)]
    assert order == [0, 1, 2, 1, 2, 3]
    unrolled = GPT(small_cfg(**{**LOOP, "num_loops": 0}, num_layers=6).model, banked=False)
    sd = looped.state_dict()
    out = {k: v for k, v in sd.items() if not k.startswith(("blocks.", "loop_mlps."))}
    for k, b in enumerate(order):
        for name, v in sd.items():
            if name.startswith(f"blocks.{b}."):
                out[f"blocks.{k}." + name[len(f'blocks.{b}.'):]] = v
    if untied:  # the repeats (positions 3, 4) run the loop MLPs 0, 1
        for k, slot in ((3, 0), (4, 1)):
            out[f"blocks.{k}.mlp.fc.weight"] = sd[f"loop_mlps.{slot}.fc.weight"]
            out[f"blocks.{k}.mlp.proj.weight"] = sd[f"loop_mlps.{slot}.proj.weight"]
    unrolled.load_state_dict(out)
    ids = torch.randint(0, V, (2, 12))
    assert torch.allclose(logits(looped, ids), logits(unrolled.eval(), ids), atol=1e-5)


def test_recurrence_before_enable_is_the_plain_stack():
    cfg = small_cfg(**LOOP, loop_enable_at=0.35)
    looped = jittered(cfg)
    plain = GPT(small_cfg(**{**LOOP, "num_loops": 0}).model)
    sd = looped.state_dict()
    # The looped schedule sizes 3 skips; the plain stack uses the first 2.
    plain.load_state_dict({**sd, "skip_weights": sd["skip_weights"][:2]})
    ids = torch.randint(0, V, (2, 12))
    looped.looping_active = looping_due(cfg.model, 0.2)
    assert not looped.looping_active
    assert torch.allclose(logits(looped, ids), logits(plain.eval(), ids), atol=1e-6)
    looped.looping_active = looping_due(cfg.model, 0.35)
    assert looped.looping_active and not torch.allclose(logits(looped, ids), logits(plain, ids), atol=1e-4)


@pytest.mark.slow
def test_untied_loop_banks_round_trip_and_equal_per_layer():
    from pgolf.model.banks import rebank_state_dict, unbank_state_dict
    cfg = small_cfg(**LOOP, loop_untied_mlp=True)
    banked = jittered(cfg)
    assert banked.loop_mlp_up_bank.shape[0] == 2 and len(banked.matrix_params()) == 6
    flat = unbank_state_dict(banked.state_dict(), banked.num_layers)
    assert "loop_mlps.1.proj.weight" in flat and "loop_mlp_up_bank" not in flat
    back = rebank_state_dict(flat, banked.num_layers)
    assert back.keys() == banked.state_dict().keys()
    plain = GPT(cfg.model, banked=False)
    plain.load_state_dict(flat)
    ids = torch.randint(0, V, (2, 12))
    assert torch.allclose(logits(banked, ids), logits(plain.eval(), ids), atol=1e-6)


# ---------------------------------------------------------------- parallel lanes

def test_parallel_lanes_with_identity_routing_are_one_parallel_residual_stream():
    """All-ones routing and unit residual keep the lanes equal: each block adds attention and
    MLP of the same input (the single-lane parallel block), computed here by hand. Without
    U-Net skips, which #1855 adds to the attention lane only."""
    cfg = small_cfg(parallel_start=2, ve_enabled=False, bigram_vocab_size=0, smear=False, unet_skips=False)
    model = jittered(cfg)
    with torch.no_grad():
        model.parallel_post_lambdas.fill_(1.0)
        model.parallel_resid_lambdas.fill_(1.0)
    ids = torch.randint(0, V, (2, 12))
    from pgolf.model.attention import rms_norm
    with torch.no_grad():
        x = x0 = model.embed(ids)
        weights, _ = model._layer_weights()
        for i, blk in enumerate(model.blocks):
            if i >= 2:
                mix = blk.resid_mix
                wq, wk, wv, wo, up, down = weights[i]
                a = blk.attn(rms_norm(mix[0] * x + mix[1] * x0) * blk.ln_mult, wq, wk, wv, wo,
                             model.rotary, "sdpa", blk.xsa)
                x = x + blk.attn_scale * a + blk.mlp_scale * blk.mlp(rms_norm(x) * blk.ln_mult, up, down)
            else:
                x = blk(x, x0, weights[i], model.rotary, "sdpa")
        want = model.compute_logits(rms_norm(x))
    assert torch.allclose(logits(model, ids), want, atol=1e-5)


@pytest.mark.slow
def test_parallel_routing_matters_and_final_lane_choice():
    cfg = small_cfg(parallel_start=2)
    model = jittered(cfg)
    ids = torch.randint(0, V, (2, 12))
    base = logits(model, ids)
    with torch.no_grad():
        model.parallel_post_lambdas[3, 1, 0] += 0.5  # block 3's MLP writes more into lane 0
    assert not torch.allclose(base, logits(model, ids), atol=1e-4)
    with torch.no_grad():
        model.parallel_post_lambdas[:2].add_(3.0)  # blocks before parallel_start: unused
    changed = logits(model, ids)
    with torch.no_grad():
        model.parallel_post_lambdas[:2].sub_(3.0)
    assert torch.allclose(changed, logits(model, ids), atol=0)


# ---------------------------------------------------------------- gates

def _load_without(model: GPT, sd: dict, drop: str) -> GPT:
    model.load_state_dict({k: v for k, v in sd.items() if drop not in k})
    return model.eval()


def test_out_gate_at_zero_init_is_the_ungated_model():
    gated = jittered(small_cfg(attn_gate="out"))
    with torch.no_grad():
        for b in gated.blocks:
            b.attn.attn_gate_w.zero_()
    plain = _load_without(GPT(small_cfg().model), gated.state_dict(), "attn_gate_w")
    ids = torch.randint(0, V, (2, 12))
    assert torch.allclose(logits(gated, ids), logits(plain, ids), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_sigmoid_gates_at_zero_halve_the_attention_output(kind):
    """sigmoid(0) = 1/2 on every head: the ungated model with half the out-projection."""
    gated = jittered(small_cfg(attn_gate=kind, attn_gate_scale=0.5))
    with torch.no_grad():
        for b in gated.blocks:
            b.attn.attn_gate_w.zero_()
    sd = gated.state_dict()
    L = gated.num_layers
    sd["qo_bank"] = sd["qo_bank"].clone()
    sd["qo_bank"][L:] *= 0.5
    plain = _load_without(GPT(small_cfg().model), sd, "attn_gate_w")
    ids = torch.randint(0, V, (2, 12))
    assert torch.allclose(logits(gated, ids), logits(plain, ids), atol=1e-6)
    with torch.no_grad():
        gated.blocks[0].attn.attn_gate_w.normal_()
    assert not torch.allclose(logits(gated, ids), logits(plain, ids), atol=1e-4)


def test_skip_gates_open_and_closed():
    """g = 1 keeps x (no skip at all); g = 0 replaces x by the weighted skip."""
    gated = jittered(small_cfg(skip_gates=True))
    sd = gated.state_dict()
    no_skips = _load_without(GPT(small_cfg(unet_skips=False).model), sd, "skip_")
    ids = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        gated.skip_gates.fill_(100.0)
    assert torch.allclose(logits(gated, ids), logits(no_skips, ids), atol=1e-6)
    with torch.no_grad():
        gated.skip_gates.fill_(0.0)
    half = logits(gated, ids)
    assert not torch.allclose(half, logits(no_skips, ids), atol=1e-4)


def test_input_smear_at_init_is_no_smear():
    smeared = GPT(small_cfg(smear_kind="input").model)
    assert smeared.smear is None and smeared.smear_lambda.item() == 0.0
    sd = smeared.state_dict()
    plain = _load_without(GPT(small_cfg(smear=False).model), sd, "smear")
    ids = torch.randint(0, V, (2, 12))
    assert torch.equal(logits(smeared.eval(), ids), logits(plain, ids))


# ---------------------------------------------------------------- document masking

BOS = 1


def packed_ids(seed=0):
    torch.manual_seed(seed)
    ids = torch.randint(2, V, (2, 20))
    ids[0, [5, 11]] = BOS
    ids[1, [0, 9, 10]] = BOS
    return ids


def segments(row):
    starts = sorted({0, *(row == BOS).nonzero().flatten().tolist()})
    return list(zip(starts, starts[1:] + [row.numel()]))


@pytest.mark.parametrize("smear_kind", ["channel", "input"])
def test_doc_masked_model_equals_each_document_alone(smear_kind):
    # rope_train_len 0: an NTK base stretched by the window length would differ between the two.
    cfg = small_cfg(doc_mask=True, smear_bos_fix=True, smear_kind=smear_kind, bigram_vocab_size=0,
                    rope_train_len=0)
    model = jittered(cfg)
    ids = packed_ids()
    full = logits(model, ids)
    for r in range(ids.size(0)):
        for a, b in segments(ids[r]):
            alone = logits(model, ids[r:r + 1, a:b])
            assert torch.allclose(full[r:r + 1, a:b], alone, atol=2e-5), (r, a, b)
    # Negative control: without the mask a later document sees the earlier one.
    open_model = jittered(small_cfg(smear_bos_fix=True, smear_kind=smear_kind, bigram_vocab_size=0,
                                    rope_train_len=0))
    a, b = segments(ids[0])[1]
    assert not torch.allclose(logits(open_model, ids)[:1, a:b], logits(open_model, ids[:1, a:b]), atol=1e-4)


def test_smear_bos_fix_is_what_keeps_documents_apart():
    cfg = small_cfg(doc_mask=True, smear_bos_fix=False, bigram_vocab_size=0, rope_train_len=0)
    model = jittered(cfg)
    ids = packed_ids()
    a, b = segments(ids[0])[1]
    assert not torch.allclose(logits(model, ids)[:1, a:b], logits(model, ids[:1, a:b]), atol=1e-4)


def _per_segment_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal):
    """What FA3's varlen kernel computes: causal attention inside each [cu[i], cu[i+1])."""
    out = torch.zeros_like(q)
    cu = cu_seqlens_q.tolist()
    for a, b in zip(cu, cu[1:]):
        if b > a:
            out[a:b] = causal_attention(q[None, a:b], k[None, a:b], v[None, a:b], "math")[0]
    return out


def test_varlen_path_equals_masked_attention(monkeypatch):
    import pgolf.model.attention as attention
    monkeypatch.setattr(attention, "fa3_varlen_function", lambda: _per_segment_varlen)
    ids = packed_ids()
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 20, 4, 8), torch.randn(2, 20, 2, 8), torch.randn(2, 20, 2, 8)
    varlen = doc_layout(ids, BOS, "varlen")
    assert varlen.cu_seqlens.tolist() == [0, 5, 11, 20, 29, 30, 40]
    # bf16 is what FA3 takes; the reference kernel above runs on those bf16 values.
    ref = causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), "math", doc_layout(ids, BOS, "masked"))
    got = causal_attention(q, k, v, "fa3", varlen)
    assert torch.allclose(got, ref.float(), atol=1e-2)
    masked = doc_layout(ids, BOS, "masked")
    assert torch.allclose(causal_attention(q, k, v, "sdpa", masked), causal_attention(q, k, v, "math", masked),
                          atol=1e-5)


# ---------------------------------------------------------------- causality and config

FRONTIER = [dict(num_loops=1, loop_start=1, loop_end=2), dict(parallel_start=2), dict(skip_gates=True),
            dict(attn_gate="out"), dict(attn_gate="dense"), dict(attn_gate="sparse"),
            dict(smear_kind="input", smear_bos_fix=True), dict(doc_mask=True, smear_bos_fix=True),
            dict(num_loops=1, loop_start=0, loop_end=1, loop_untied_mlp=True, parallel_start=3,
                 skip_gates=True, attn_gate="sparse", smear_kind="input", doc_mask=True)]


@pytest.mark.parametrize("over", FRONTIER)
@pytest.mark.parametrize("j", [0, 5, 11])
def test_causality_every_frontier_switch(over, j):
    model = jittered(small_cfg(**over))
    ids = packed_ids()
    a = logits(model, ids)
    ids2 = ids.clone()
    ids2[:, j] = (ids2[:, j] + 7) % V
    b = logits(model, ids2)
    assert torch.equal(a[:, :j], b[:, :j])
    assert not torch.allclose(a[:, j:], b[:, j:])


@pytest.mark.parametrize("sets, field", [
    (["model.num_loops=1", "model.loop_start=2", "model.loop_end=1"], "model.loop_end"),
    (["model.num_loops=1", "model.loop_end=11"], "model.loop_end"),
    (["model.parallel_start=11"], "model.parallel_start"),
    (["model.num_loops=1", "model.loop_start=3", "model.loop_end=8", "model.parallel_start=7"], "model.loop_end"),
    (["model.attn_gate=sparse", "model.gate_window=600"], "model.gate_window"),
    (["model.bos_id=2000"], "model.bos_id"),
    (["model.loop_enable_at=1.0"], "model.loop_enable_at"),
])
def test_frontier_config_rules_name_the_field(sets, field):
    with pytest.raises(ConfigError, match=field):
        resolve_config("record_1128", env={}, sets=sets)
