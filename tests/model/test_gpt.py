"""The record model: parameter counts, causality per component, XSA, hashing, banks."""

import copy
import inspect
import sys

import pytest
import torch

from pgolf.config import finalize_config, resolve_config
from pgolf.config_tree import Config
from pgolf.model.attention import causal_attention, ntk_rope_base, xsa_remove_self_value
from pgolf.model.banks import rebank_state_dict, unbank_state_dict
from pgolf.model.embeddings import bigram_buckets
from pgolf.model.gpt import GPT, count_params
from pgolf.quant.fake_quant import attach_late_qat


def tiny_cfg(**over) -> Config:
    cfg = Config()
    m = cfg.model
    m.arch, m.vocab_size, m.num_layers, m.model_dim = "record", 64, 4, 32
    m.num_heads, m.num_kv_heads, m.mlp_mult = 4, 2, 2.0
    m.bigram_vocab_size, m.bigram_dim, m.ve_dim, m.rope_train_len, m.rope_dims = 48, 8, 8, 8, 4
    for k, v in over.items():
        setattr(m, k, v)
    finalize_config(cfg)
    return cfg


def perturb_logits(model, ids, j):
    model.eval()
    with torch.no_grad():
        a = model.forward_logits(ids)
        ids2 = ids.clone()
        ids2[:, j] = (ids2[:, j] + 7) % model.cfg.vocab_size
        b = model.forward_logits(ids2)
    return a, b


@pytest.mark.parametrize("preset", ["record_1128", "record_549"])
def test_record_presets_have_reference_param_count(preset):
    cfg, _ = resolve_config(preset, env={})
    with torch.device("meta"):
        assert count_params(GPT(cfg.model)) == 26_928_220


def test_default_bigram_table_and_baseline_counts():
    cfg, _ = resolve_config("record_1128", env={}, sets=["model.bigram_vocab_size=2048"])
    base, _ = resolve_config("baseline", env={})
    with torch.device("meta"):
        assert count_params(GPT(cfg.model)) == 26_993_756
        assert count_params(GPT(base.model)) == 17_059_912


def test_ntk_rope_base_matches_reference():
    assert ntk_rope_base(10000.0, 16, 2048, 1024) == pytest.approx(22081.0, abs=1.0)
    assert ntk_rope_base(10000.0, 16, 1024, 1024) == 10000.0
    assert ntk_rope_base(10000.0, 16, 2048, 0) == 10000.0


COMPONENTS = [dict(), dict(bigram_vocab_size=0), dict(smear=False), dict(xsa_last_n=0),
              dict(ve_enabled=False), dict(ln_scale=False), dict(rope_dims=0), dict(unet_skips=False)]


@pytest.mark.parametrize("over", COMPONENTS)
@pytest.mark.parametrize("j", [0, 5, 11])
def test_causality_every_component(over, j):
    torch.manual_seed(0)
    model = GPT(tiny_cfg(**over).model)
    # Break the zero-init symmetry so every part actually carries signal.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, 64, (2, 16))
    a, b = perturb_logits(model, ids, j)
    assert torch.equal(a[:, :j], b[:, :j])
    assert not torch.allclose(a[:, j:], b[:, j:])


def test_xsa_removes_self_value_component():
    torch.manual_seed(0)
    y = torch.randn(2, 5, 4, 8)
    v = torch.randn(2, 5, 2, 8)
    out = xsa_remove_self_value(y, v)
    vn = torch.nn.functional.normalize(v, dim=-1).repeat_interleave(2, dim=2)
    assert (out * vn).sum(-1).abs().max() < 1e-5
    # What remains is y minus exactly its projection.
    proj = (y * vn).sum(-1, keepdim=True) * vn
    assert torch.allclose(out, y - proj, atol=1e-6)
    assert (y * vn).sum(-1).abs().max() > 0.1


def test_bigram_hash_hand_example():
    ids = torch.tensor([[5, 7, 1000]])
    b = bigram_buckets(ids, 1536)
    assert b[0, 0].item() == 1535
    assert b[0, 1].item() == ((36313 * 7) ^ (27191 * 5)) % 1535
    assert b[0, 2].item() == ((36313 * 1000) ^ (27191 * 7)) % 1535
    assert b[0, 1].item() == 591  # 254191 ^ 135955 = 127996; 127996 % 1535 = 591


def test_unbank_rebank_round_trip_is_exact():
    torch.manual_seed(0)
    model = GPT(tiny_cfg().model)
    sd = model.state_dict()
    flat = unbank_state_dict(sd, model.num_layers)
    assert "blocks.3.attn.c_v.weight" in flat and "qo_bank" not in flat
    assert torch.equal(flat["blocks.1.attn.proj.weight"], sd["qo_bank"][4 + 1])
    back = rebank_state_dict(flat, model.num_layers)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_banked_equals_per_layer_model():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    banked = GPT(cfg.model)
    with torch.no_grad():
        for p in banked.parameters():
            p.add_(0.05 * torch.randn_like(p))
    plain = GPT(cfg.model, banked=False)
    plain.load_state_dict(unbank_state_dict(banked.state_dict(), banked.num_layers))
    ids = torch.randint(0, 64, (2, 16))
    assert torch.allclose(banked.forward_logits(ids), plain.forward_logits(ids), atol=1e-6)
    assert {id(p) for p in banked.matrix_params()}.isdisjoint(id(p) for p in banked.scalar_params())
    n = sum(p.numel() for p in banked.matrix_params() + banked.embedding_params() + banked.scalar_params())
    assert n == count_params(banked)


def test_sdpa_matches_math_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 9, 4, 8), torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8)
    assert torch.allclose(causal_attention(q, k, v, "sdpa"), causal_attention(q, k, v, "math"), atol=1e-5)


def _perturbed(cfg):
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_late_qat_is_a_transform_from_outside_and_keeps_gradients():
    model = _perturbed(tiny_cfg())
    ids = torch.randint(0, 64, (2, 16))
    plain = model.forward_logits(ids)
    qat = attach_late_qat(model, 4, "matrices")
    assert torch.equal(model.forward_logits(ids), plain)  # inactive: the identity
    qat.active = True
    on = model.forward_logits(ids)
    assert not torch.allclose(plain, on)
    model(ids, ids).backward()
    assert model.qo_bank.grad is not None and model.qo_bank.grad.abs().sum() > 0
    # The model module itself knows nothing of quantization.
    src = inspect.getsource(sys.modules[GPT.__module__])
    assert "pgolf.quant" not in src and "fake_quant" not in src


def test_inactive_qat_computes_no_fake_quantization(monkeypatch):
    import pgolf.quant.fake_quant as fq
    calls = []
    monkeypatch.setattr(fq, "fake_quant_ste", lambda w, bits: calls.append(w.shape) or w)
    model = _perturbed(tiny_cfg())
    qat = attach_late_qat(model, 6, "matrices")
    ids = torch.randint(0, 64, (2, 16))
    model.forward_logits(ids)
    assert calls == []  # before the switch the forward pays nothing for QAT
    qat.active = True
    model.forward_logits(ids)
    assert sorted(calls) == sorted(p.shape for p in model.matrix_params())  # once per bank


def test_reference_qat_scope_touches_only_the_two_projections():
    model = _perturbed(tiny_cfg())
    seen = []
    qat = attach_late_qat(model, 6, "reference")
    qat.active = True
    real = qat.forward
    qat.forward = lambda group, w: seen.append((group, tuple(w.shape))) or real(group, w)
    model.forward_logits(torch.randint(0, 64, (2, 16)))
    transformed = {shape for group, shape in seen if group == "projections"}
    assert transformed == {tuple(model.bigram.proj.weight.shape), tuple(model.ve.proj.weight.shape)}
    # The block matrices pass through unchanged; the projections land on the reference grid.
    for bank, w in zip(model.matrix_params(), (model._weight("blocks", b) for b in model.matrix_params())):
        assert torch.equal(bank, w)
    w = model.bigram.proj.weight
    q = model._weight("projections", w)
    scale = (w.detach().abs().amax(-1) / 31).clamp_min(1 / 31)
    codes = q.detach() / scale[:, None]
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.min() >= -32 and codes.max() <= 31


def test_bf16_embedding_tables_train_and_match_fp32_on_the_same_weights():
    from pgolf.optim.builder import build_optimizers
    bf = _perturbed(tiny_cfg(embed_dtype="bf16"))
    fp = GPT(tiny_cfg().model)
    assert {p.dtype for p in bf.embedding_params()} == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in bf.matrix_params() + bf.scalar_params())
    fp.load_state_dict({k: v.float() for k, v in bf.state_dict().items()})
    ids = torch.randint(0, 64, (2, 16))
    # Same stored values, fp32 compute in both: equal up to fp32 rounding.
    assert torch.allclose(bf.forward_logits(ids), fp.forward_logits(ids), atol=1e-5)
    opt = build_optimizers(bf, tiny_cfg().optim)
    before = bf.tok_emb.weight.detach().clone()
    bf(ids, ids).backward()
    opt.reduce_and_step(bf, 0.0)
    assert bf.tok_emb.weight.dtype == torch.bfloat16 and not torch.equal(before, bf.tok_emb.weight)


def test_zero_block_grads_only_touches_chosen_blocks():
    torch.manual_seed(0)
    model = GPT(tiny_cfg().model)
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model(ids, ids).backward()
    model.zero_block_grads_([0])
    L = model.num_layers
    assert model.qo_bank.grad[0].abs().sum() == 0 and model.qo_bank.grad[L].abs().sum() == 0
    assert model.mlp_up_bank.grad[0].abs().sum() == 0
    assert model.mlp_up_bank.grad[1].abs().sum() > 0
    assert all(p.grad.abs().sum() == 0 for p in model.blocks[0].parameters())


def test_record_model_trains_with_every_component(embedded_corpus):
    from pgolf.data.loader import DistributedTokenLoader
    from pgolf.optim.builder import build_optimizers
    torch.manual_seed(0)
    cfg = tiny_cfg(vocab_size=1024, model_dim=64, bigram_vocab_size=256)
    model = GPT(cfg.model)
    opt = build_optimizers(model, cfg.optim)
    loader = DistributedTokenLoader(embedded_corpus["train_pattern"])
    losses = []
    for _ in range(30):
        x, y = loader.next_batch(8 * 64, 64, 1)
        loss = model(x, y)
        loss.backward()
        opt.reduce_and_step(model, 0.0)
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0
