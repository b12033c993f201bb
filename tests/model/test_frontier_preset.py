"""The record_1855 preset against record #1855's train_gpt.py (read for facts, not copied).

Checked: the parameter count, every tensor name and shape (the record's own names, so its
state dict loads without a mapping), and the logits of a forward pass written out here from
the script's `_forward_hidden` (looped encoder/decoder order, lerp skip gates, 2-lane parallel
decoder, sparse head gate, XSA everywhere, BOS-fixed input SmearGate, BOS-split varlen
attention) at a small width on the same weights. Not checked: the script itself cannot run
here (FA3 + Triton imports, no network), so its code is not executed.
"""

import math

import pytest
import torch
import torch.nn.functional as F

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


# ---------------------------------------------------------------- the script's forward, written out

def _ref_attention(sd, i, n, layers, heads, kv_heads, rope_dims, window, gate_scale, docs):
    b, t, d = n.shape
    hd = d // heads
    q = (n @ sd["qo_bank"][i].T).view(b, t, heads, hd)
    k = (n @ sd["kv_bank"][i].T).view(b, t, kv_heads, hd)
    v = (n @ sd["kv_bank"][layers + i].T).view(b, t, kv_heads, hd)
    q, k = F.rms_norm(q, (hd,)), F.rms_norm(k, (hd,))
    inv = 1.0 / 1e4 ** (torch.arange(0, rope_dims, 2, dtype=torch.float32) / rope_dims)
    f = torch.outer(torch.arange(t, dtype=torch.float32), inv)
    cos, sin = f.cos()[None, :, None], f.sin()[None, :, None]

    def rope(x):
        half = rope_dims // 2
        x1, x2, rest = x[..., :half], x[..., half:rope_dims], x[..., rope_dims:]
        return torch.cat((x1 * cos + x2 * sin, -x1 * sin + x2 * cos, rest), dim=-1)

    q, k = rope(q), rope(k)
    q = q * sd[f"blocks.{i}.attn.q_gain"][None, None, :, None]
    rep = heads // kv_heads
    kk, vv = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    s = torch.einsum("bthd,bshd->bhts", q, kk) / math.sqrt(hd)
    allowed = torch.ones(t, t, dtype=torch.bool).tril() & (docs[:, :, None] == docs[:, None, :])[:, None]
    y = torch.einsum("bhts,bshd->bthd", s.masked_fill(~allowed, float("-inf")).softmax(-1), vv)
    # XSA on every layer (xsa_last_n = 11), then the sparse head gate.
    yg = y.view(b, t, kv_heads, rep, hd)
    vn = F.normalize(v, dim=-1).unsqueeze(3)
    y = (yg - (yg * vn).sum(-1, keepdim=True) * vn).view(b, t, heads, hd)
    g = torch.sigmoid(gate_scale * (n[..., :window] @ sd[f"blocks.{i}.attn.attn_gate_w"].T))
    y = y * g[..., None]
    return y.reshape(b, t, d) @ sd["qo_bank"][layers + i].T


def reference_logits(sd, ids, m):
    L, W = m.num_layers, m.gate_window
    rms = lambda z: F.rms_norm(z, (z.size(-1),))  # noqa: E731
    x = sd["tok_emb.weight"][ids]
    g = sd["smear_lambda"] * torch.sigmoid(x[:, 1:, :W] @ sd["smear_gate.weight"].T)
    not_bos = (ids[:, 1:] != m.bos_id).float().unsqueeze(-1)
    x = torch.cat([x[:, :1], x[:, 1:] + g * x[:, :-1] * not_bos], dim=1)
    x = x0 = rms(x)
    docs = (ids == m.bos_id).cumsum(1)
    attn = lambda i, n: _ref_attention(sd, i, n, L, m.num_heads, m.num_kv_heads, m.rope_dims, W,  # noqa: E731
                                       m.attn_gate_scale, docs)
    mlp = lambda i, n: F.leaky_relu(n @ sd["mlp_up_bank"][i].T, 0.5).square() @ sd["mlp_down_bank"][i].T  # noqa: E731
    ln = lambda i: 1.0 / math.sqrt(i + 1)  # noqa: E731

    def block(i, x):
        mix = sd[f"blocks.{i}.resid_mix"]
        x_in = mix[0] * x + mix[1] * x0
        x_out = x_in + sd[f"blocks.{i}.attn_scale"] * attn(i, rms(x_in) * ln(i))
        return x_out + sd[f"blocks.{i}.mlp_scale"] * mlp(i, rms(x_out) * ln(i))

    seg = list(range(m.loop_start, m.loop_end + 1))
    order = list(range(m.loop_start)) + seg * (m.num_loops + 1) + list(range(m.loop_end + 1, L))
    enc, dec = order[:len(order) // 2], order[len(order) // 2:]
    n_skip = min(len(enc), len(dec))
    skips, lane0, lane1 = [], None, None
    for i in enc:
        x = block(i, x)
        skips.append(x)
    for j, i in enumerate(dec):
        w = sd["skip_weights"][j] if j < n_skip else None
        gate = torch.sigmoid(sd["skip_gates"][j]) if j < n_skip else None
        if i >= m.parallel_start:
            if lane0 is None:
                lane0 = lane1 = x
            if j < n_skip and skips:
                lane0 = torch.lerp(w * skips.pop(), lane0, gate)
            mix = sd[f"blocks.{i}.resid_mix"]
            a = sd[f"blocks.{i}.attn_scale"] * attn(i, rms(mix[0] * lane0 + mix[1] * x0) * ln(i))
            f = sd[f"blocks.{i}.mlp_scale"] * mlp(i, rms(lane1) * ln(i))
            r, p = sd["parallel_resid_lambdas"][i], sd["parallel_post_lambdas"][i]
            lane0, lane1 = (r[0] * lane0 + p[0][0] * a + p[1][0] * f, r[1] * lane1 + p[0][1] * a + p[1][1] * f)
        else:
            if j < n_skip and skips:
                x = torch.lerp(w * skips.pop(), x, gate)
            x = block(i, x)
    h = rms(0.5 * (lane0 + lane1))
    return 30.0 * torch.tanh((h @ sd["tok_emb.weight"].T) / 30.0)


@pytest.mark.slow
def test_record_1855_forward_equals_the_scripts_forward_on_the_same_weights():
    # The preset at a small width (depth, loops, lanes, gates, XSA, smear as the record).
    cfg, _ = resolve_config("record_1855", env={}, sets=[
        "model.vocab_size=64", "model.model_dim=32", "model.num_heads=4", "model.num_kv_heads=2",
        "model.rope_dims=4", "model.gate_window=6", "model.compile=false",
        # The architecture in fp32: the transcription below builds fp32 RoPE frequencies.
        "model.rope_precision=fp32", "model.embed_dtype=fp32"])
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    sd = model.state_dict()
    assert set(sd) == set(reference_shapes(64, 32, 11, 4, 2, 4.0, 6, 8))
    torch.manual_seed(1)
    ids = torch.randint(2, 64, (2, 24))
    ids[:, 0] = 1
    ids[0, 9] = ids[1, 17] = 1
    with torch.no_grad():
        ours = model.forward_logits(ids)
        want = reference_logits(sd, ids, cfg.model)
    assert torch.allclose(ours, want, atol=2e-5), (ours - want).abs().max()
