"""Model-side numerics of record #1855 as it ran: RoPE tables in fp32 with bf16 frequencies, every
initial weight a bf16 number, the tied embedding stored in bf16."""

import math

import torch

from pgolf.config import resolve_config
from pgolf.model.attention import Rotary
from pgolf.model.gpt import GPT

SMALL = ["model.vocab_size=64", "model.model_dim=32", "model.num_heads=4", "model.num_kv_heads=2",
         "model.rope_dims=4", "model.gate_window=6", "model.compile=false"]


def angles(rot: Rotary, t: int) -> torch.Tensor:
    cos, sin = rot(t, torch.device("cpu"), torch.float32)
    return torch.atan2(sin, cos)[0, :, 0].double()   # [t, rd/2]


def test_fp32_tables_differ_from_fp64_only_in_the_last_bits():
    exact, f32 = Rotary(64, 16, 10000.0, 0, "fp64"), Rotary(64, 16, 10000.0, 0, "fp32")
    c64, _ = exact(2048, torch.device("cpu"), torch.float32)
    c32, _ = f32(2048, torch.device("cpu"), torch.float32)
    assert not torch.equal(c64, c32)
    # fp32 angles near 2047 rad carry ~1e-4 rad of rounding.
    assert (c64 - c32).abs().max() < 5e-4


def test_fp32_frequencies_are_the_fp32_powers():
    rot = Rotary(64, 16, 10000.0, 0, "fp32")
    ang = angles(rot, 3)
    want = [1.0 / 10000.0 ** (i / 16) for i in range(0, 16, 2)]
    assert torch.allclose(ang[1], torch.tensor(want, dtype=torch.float64), rtol=1e-6)


def test_bf16_freq_frequencies_are_bf16_numbers():
    rot = Rotary(64, 16, 10000.0, 0, "bf16_freq")
    freq = angles(rot, 3)[1]
    as_bf16 = freq.to(torch.bfloat16).double()
    assert torch.allclose(freq, as_bf16, rtol=1e-6, atol=0)
    # 10000^(-1/8) = 0.316228 becomes 0.31640625: far from the fp32 table by position 1000.
    assert abs(freq[1].item() - 0.31640625) < 1e-6
    far = Rotary(64, 16, 10000.0, 0, "fp32")(1001, torch.device("cpu"), torch.float32)[0]
    near = rot(1001, torch.device("cpu"), torch.float32)[0]
    assert (far[0, 1000, 0, 1] - near[0, 1000, 0, 1]).abs() > 0.05


def small_model(*sets: str) -> GPT:
    cfg, _ = resolve_config("record_1855", env={}, sets=SMALL + list(sets))
    torch.manual_seed(0)
    return GPT(cfg.model)


def test_record_1855_model_numerics():
    model = small_model()
    assert model.tok_emb.weight.dtype == torch.bfloat16
    assert model.rotary.precision == "bf16_freq"
    assert model.parallel_resid_lambdas[0, 0].item() == 1.1015625
    for name, p in model.named_parameters():
        assert torch.equal(p.float(), p.to(torch.bfloat16).float()), name
        assert p.dtype == (torch.bfloat16 if name == "tok_emb.weight" else torch.float32), name


def test_default_init_keeps_fp32_values():
    model = small_model("model.init_bf16=false", "model.embed_dtype=fp32")
    assert math.isclose(model.parallel_resid_lambdas[0, 0].item(), 1.1, rel_tol=1e-7)
    bank = model.qo_bank.detach()
    assert not torch.equal(bank, bank.to(torch.bfloat16).float())


def test_rope_precision_changes_the_logits():
    ids = torch.randint(2, 64, (1, 40), generator=torch.Generator().manual_seed(3))
    logits = {}
    for prec in ("fp64", "fp32", "bf16_freq"):
        model = small_model(f"model.rope_precision={prec}", "model.embed_dtype=fp32")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
            logits[prec] = model.eval().forward_logits(ids)
    table_rounding = (logits["fp64"] - logits["fp32"]).abs().max()
    bf16_freqs = (logits["fp32"] - logits["bf16_freq"]).abs().max()
    assert table_rounding < 1e-5 and bf16_freqs > 10 * table_rounding, (table_rounding, bf16_freqs)


def test_fp32_tables_round_the_angle_to_fp32_before_the_cosine():
    rot = Rotary(64, 16, 10000.0, 0, "fp32")
    cos = rot(2048, torch.device("cpu"), torch.float32)[0][0, :, 0].double()
    freq = 1.0 / 10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16)   # fp32 frequencies
    t = torch.arange(2048, dtype=torch.float64)[:, None]
    exact_angle = t * freq.double()                         # t * f without rounding
    rounded_angle = exact_angle.float().double()            # the angle as an fp32 number
    assert (cos - torch.cos(rounded_angle)).abs().max() < 1e-6
    assert (cos - torch.cos(exact_angle)).abs().max() > 2e-5


def test_stream_dtype_embed_keeps_a_bf16_table_s_dtype_through_the_stack():
    ids = torch.randint(2, 64, (1, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert small_model().eval().forward_hidden(ids).dtype == torch.bfloat16
        assert small_model("model.stream_dtype=fp32").eval().forward_hidden(ids).dtype == torch.float32
        assert small_model("model.embed_dtype=fp32").eval().forward_hidden(ids).dtype == torch.float32
