"""bf16 autocast vs fp32 on the record model; which SDPA kernels run causal GQA, and whether
each equals pgolf's math attention; FA3 when it is installed."""

import math

import pytest
import torch
from _gpu_helpers import SMALL_RECORD, cosine, filled_model, record_cfg, rel_err
from torch.nn.attention import SDPBackend, sdpa_kernel

from pgolf.hw import compute_autocast, resolve_attention_backend
from pgolf.model.attention import causal_attention

pytestmark = pytest.mark.gpu

# Attention ops as the dispatcher names them: the profiler shows which one a call ran.
SDPA_OPS = {
    "flash": "aten::_scaled_dot_product_flash_attention",
    "efficient": "aten::_scaled_dot_product_efficient_attention",
    "cudnn": "aten::_scaled_dot_product_cudnn_attention",
    "math": "aten::_scaled_dot_product_attention_math",
    "flash_cpu": "aten::_scaled_dot_product_flash_attention_for_cpu",
}
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def _bf16_autocast(dev):
    # On CUDA the production recipe; the CPU logic check forces bf16 (production CPU is fp32).
    return compute_autocast(dev) if dev.type == "cuda" else torch.autocast("cpu", dtype=torch.bfloat16)


def _loss_and_grads(model, x, y, ctx):
    model.zero_grad(set_to_none=True)
    with ctx:
        loss = model(x, y)
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def test_bf16_autocast_matches_fp32_record_model(dev, report, fp32_exact):
    """record_1128 at full size (2 x 2048 tokens) on the GPU: the bf16-autocast loss and
    gradients against the same weights computed in fp32."""
    gpu = dev.type == "cuda"
    seqs, t = (2, 2048) if gpu else (2, 128)
    cfg = record_cfg(*([] if gpu else SMALL_RECORD), f"run.train_seq_len={t}", f"eval.seq_len={t}")
    # std 1/sqrt(d): unit-scale activations, the regime of a trained model.
    model = filled_model(cfg, dev, sigma=1.0 / math.sqrt(cfg.model.model_dim))
    ids = torch.randint(0, cfg.model.vocab_size, (seqs, t + 1), generator=torch.Generator().manual_seed(1))
    x, y = ids[:, :-1].to(dev), ids[:, 1:].to(dev)
    loss32, g32 = _loss_and_grads(model, x, y, torch.autocast(dev.type, enabled=False))
    loss16, g16 = _loss_and_grads(model, x, y, _bf16_autocast(dev))
    assert set(g16) == set(g32)
    big = [n for n in g32 if g32[n].numel() >= 4096 and g32[n].norm() > 0]
    cos = {n: cosine(g16[n], g32[n]) for n in big}
    flat16 = torch.cat([g16[n].flatten() for n in sorted(g32)])
    flat32 = torch.cat([g32[n].flatten() for n in sorted(g32)])
    worst = min(cos, key=cos.get)
    report.record("bf16_vs_fp32", {
        "model": "record_1128" if gpu else "record_1128 small (CPU logic check)", "tokens": f"{seqs}x{t}",
        "loss_fp32": loss32, "loss_bf16": loss16, "loss_rel_diff": abs(loss16 - loss32) / loss32,
        "grad_cosine_all": cosine(flat16, flat32), "grad_cosine_min": cos[worst], "grad_cosine_min_param": worst,
        "grad_rel_err_all": rel_err(flat16, flat32), "params_compared": len(big)})
    assert math.isfinite(loss16) and math.isfinite(loss32)
    # bf16 rounds each op to 8 mantissa bits (~0.4% relative); the logits, softmax and loss
    # are fp32 and the mean over 4096 tokens averages the rounding, so 1% is several times
    # what rounding gives, while a wrong dtype, scale or mask path moves the loss further.
    assert abs(loss16 - loss32) <= 0.01 * loss32, (loss16, loss32)
    # Per-element gradient errors of a few 0.1% leave directions almost unchanged: 0.99 per
    # tensor (>= 4096 elements, so the ratio is not one noisy entry) and 0.995 overall.
    assert cos[worst] > 0.99, (worst, cos[worst])
    assert cosine(flat16, flat32) > 0.995


def _qkv(dev, b, t, h, hkv, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, t, n, d, generator=g) for n in (h, hkv, hkv))
    # Unit-norm rows scaled like the model's (q gain 1.5 after RMS norm): peaked, finite scores.
    q, k = 1.5 * torch.nn.functional.rms_norm(q, (d,)), torch.nn.functional.rms_norm(k, (d,))
    return [u.to(dev, dtype).requires_grad_(True) for u in (q, k, v)]


def _run(q, k, v, gout, backend):
    for u in (q, k, v):
        u.grad = None
    out = causal_attention(q, k, v, backend)
    out.backward(gout)
    return out.detach().float(), [u.grad.detach().float() for u in (q, k, v)]


def _ops_seen(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    return sorted(k for k, op in SDPA_OPS.items() if op in names)


def test_sdpa_backends_for_bf16_causal_gqa(dev, report, fp32_exact):
    """Each SDPA kernel alone (flash, efficient, cuDNN, math) on bf16 causal GQA at the
    record's shape: which run, and whether each equals pgolf's math attention."""
    gpu = dev.type == "cuda"
    b, t, h, hkv, d = (4, 2048, 8, 4, 64) if gpu else (2, 256, 8, 4, 64)
    q, k, v = _qkv(dev, b, t, h, hkv, d, torch.bfloat16)
    gout = torch.randn(b, t, h, d, generator=torch.Generator().manual_seed(1)).to(dev, torch.bfloat16)
    # Reference: pgolf's math backend on the same bf16 inputs upcast to fp32.
    q32, k32, v32 = (u.detach().float().requires_grad_(True) for u in (q, k, v))
    ref_out, ref_grads = _run(q32, k32, v32, gout.float(), "math")
    results = {}
    for name, backend in BACKENDS.items():
        try:
            with sdpa_kernel([backend]):
                out, grads = _run(q, k, v, gout, "sdpa")
        except RuntimeError as e:
            results[name] = {"runs": False, "error": str(e).strip().splitlines()[0][:300]}
            continue
        results[name] = {"runs": True, "max_abs_err": float((out - ref_out).abs().max()),
                         "out_rel_err": rel_err(out, ref_out),
                         "grad_rel_err": {n: rel_err(g, r) for n, g, r in zip("qkv", grads, ref_grads)}}
    chosen = _ops_seen(lambda: causal_attention(q.detach(), k.detach(), v.detach(), "sdpa"))
    fp32_ops = None
    if gpu:
        # pgolf expands K/V for fp32 GQA on CUDA so the memory-efficient kernel takes it.
        q3, k3, v3 = (u.detach().float() for u in (q, k, v))
        fp32_ops = _ops_seen(lambda: causal_attention(q3, k3, v3, "sdpa"))
    report.record("sdpa_backends", {"shape": {"B": b, "T": t, "H": h, "Hkv": hkv, "D": d}, "dtype": "bf16",
                                    "default_dispatch_bf16": chosen, "default_dispatch_fp32": fp32_ops,
                                    "pgolf_auto_backend": resolve_attention_backend("auto", dev),
                                    "backends": results})
    ran = [n for n, r in results.items() if r["runs"]]
    assert ran, results
    if gpu:
        assert any(n in ran for n in ("flash", "efficient", "cudnn")), f"no fused kernel takes bf16 GQA: {results}"
        assert fp32_ops and "math" not in fp32_ops, f"fp32 GQA fell back to the math kernel: {fp32_ops}"
        assert chosen and "math" not in chosen, f"default bf16 dispatch fell back to the math kernel: {chosen}"
    for name in ran:
        r = results[name]
        # bf16 output: |out| <= max|v| ~ 4 here, rounded to 8 mantissa bits (<= 0.016), plus
        # the kernels' bf16 probabilities: 3e-2 absolute, 1% in norm.
        assert r["max_abs_err"] < 3e-2 and r["out_rel_err"] < 1e-2, (name, r)
        # Gradients go through two more bf16 matmuls (dS, then dQ/dK): 2% in norm.
        assert max(r["grad_rel_err"].values()) < 2e-2, (name, r)


def test_fa3_matches_math_when_installed(dev, cuda_only, report, fp32_exact):
    try:
        import flash_attn_interface  # noqa: F401
    except ImportError as e:
        report.record("fa3", {"importable": False, "error": str(e)})
        pytest.skip(f"flash_attn_interface (FA3) is not importable here: {e}")
    if torch.cuda.get_device_capability(dev)[0] != 9:
        pytest.skip("FA3 needs a Hopper GPU (compute capability 9.x)")
    q, k, v = _qkv(dev, 4, 2048, 8, 4, 64, torch.bfloat16)
    gout = torch.randn(4, 2048, 8, 64, generator=torch.Generator().manual_seed(1)).to(dev, torch.bfloat16)
    q32, k32, v32 = (u.detach().float().requires_grad_(True) for u in (q, k, v))
    ref_out, ref_grads = _run(q32, k32, v32, gout.float(), "math")
    out, grads = _run(q, k, v, gout, "fa3")
    res = {"importable": True, "max_abs_err": float((out - ref_out).abs().max()), "out_rel_err": rel_err(out, ref_out),
           "grad_rel_err": {n: rel_err(g, r) for n, g, r in zip("qkv", grads, ref_grads)},
           "pgolf_auto_backend": resolve_attention_backend("auto", dev)}
    report.record("fa3", res)
    assert res["pgolf_auto_backend"] == "fa3"
    # Same bounds and reasons as the SDPA kernels above.
    assert res["max_abs_err"] < 3e-2 and res["out_rel_err"] < 1e-2, res
    assert max(res["grad_rel_err"].values()) < 2e-2, res
