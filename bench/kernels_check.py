"""Each Triton kernel of pgolf.kernels against its eager path at record #1855's shapes, on a GPU.

One GPU's share of the record's step: 98,304 tokens, vocabulary 8,192 (soft-cap 30), model
width 512, MLP hidden 2,048 (mlp_mult 4), leaky slope 0.5; bf16 as training runs. For each
kernel: forward+backward milliseconds (median of CUDA-event timings after warmup) of the fused
op, of the eager reference and of the eager reference under torch.compile, and the max abs
error of the fused op's loss/output and gradients against the eager path computed in fp32;
for the up-projection, which kernel (tensor descriptors or pointers) its forward and its backward
launched, and the ms with both on the pointer kernel.
Usage: python bench/kernels_check.py [--tokens N] [--iters N] [--json]
bench/gpu_check.sh runs it as step (k), beside record_1855's step time with the kernels on and off.
"""

import argparse
import contextlib
import inspect
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

from pgolf.kernels import leaky_mlp
from pgolf.kernels.leaky_mlp import leaky_relu_squared_linear
from pgolf.kernels.softcap_ce import softcap_cross_entropy
from pgolf.model.mlp import leaky_relu_squared


def _time_ms(fn, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _eager_ce(x, t, cap):
    return F.cross_entropy(cap * torch.tanh(x.float() / cap), t)


def check_ce(tokens: int, vocab: int, cap: float, iters: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(tokens, vocab, device="cuda", generator=g) * 10).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, vocab, (tokens,), device="cuda", generator=g)
    compiled = torch.compile(_eager_ce, fullgraph=True, dynamic=False)

    def run(fn):
        def step():
            x.grad = None
            fn(x, t, cap).backward()
        return step

    ref = x.detach().float().requires_grad_()
    ref_loss = _eager_ce(ref, t, cap)
    ref_loss.backward()
    x.grad = None
    loss = softcap_cross_entropy(x, t, cap)
    loss.backward()
    return {"shape": [tokens, vocab], "cap": cap, "dtype": "bf16",
            "fused_ms": _time_ms(run(softcap_cross_entropy), iters),
            "eager_ms": _time_ms(run(_eager_ce), iters),
            "compiled_eager_ms": _time_ms(run(compiled), iters),
            "max_err_loss": (loss.float() - ref_loss).abs().item(),
            "max_err_grad": (x.grad.float() - ref.grad).abs().max().item()}


def _eager_mlp(x, w, slope):
    return leaky_relu_squared(F.linear(x, w), slope)


@contextlib.contextmanager
def mlp_kernels_launched():
    """Yields a dict that gets, for each pass of the fused up-projection run inside, the kernel
    ("descriptor" or "pointer") it launched, as seen at the launch: forward_kernel, backward_kernel."""
    seen = {}
    real = {"pointer": leaky_mlp._leaky_mm, "descriptor": leaky_mlp._leaky_mm_desc}

    def spy(kind):
        def launch(*args):
            backward = inspect.signature(real[kind]).bind(*args).arguments["prologue"]  # dh: the backward's
            seen["backward_kernel" if backward else "forward_kernel"] = kind
            return real[kind](*args)
        return launch

    leaky_mlp._leaky_mm, leaky_mlp._leaky_mm_desc = spy("pointer"), spy("descriptor")
    try:
        yield seen
    finally:
        leaky_mlp._leaky_mm, leaky_mlp._leaky_mm_desc = real["pointer"], real["descriptor"]


def check_mlp(tokens: int, dim: int, hidden: int, slope: float, iters: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(tokens, dim, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(hidden, dim, device="cuda", generator=g) / dim ** 0.5).to(torch.bfloat16).requires_grad_()
    dy = torch.randn(tokens, hidden, device="cuda", generator=g).to(torch.bfloat16)
    compiled = torch.compile(_eager_mlp, fullgraph=True, dynamic=False)

    def run(fn):
        def step():
            x.grad = w.grad = None
            fn(x, w, slope).backward(dy)
        return step

    xr, wr = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    yr = _eager_mlp(xr, wr, slope)
    yr.backward(dy.float())
    x.grad = w.grad = None
    with mlp_kernels_launched() as kernels:
        y = leaky_relu_squared_linear(x, w, slope)
        y.backward(dy)
    # The two kernels: tensor descriptors (Hopper, chosen by auto there) and pointers.
    os.environ["PGOLF_MLP_KERNEL"] = "pointer"
    pointer_ms = _time_ms(run(leaky_relu_squared_linear), iters)
    os.environ.pop("PGOLF_MLP_KERNEL")
    return {"shape": [tokens, dim, hidden], "slope": slope, "dtype": "bf16",
            **kernels, "fused_pointer_ms": pointer_ms,
            "fused_ms": _time_ms(run(leaky_relu_squared_linear), iters),
            "eager_ms": _time_ms(run(_eager_mlp), iters),
            "compiled_eager_ms": _time_ms(run(compiled), iters),
            "max_err_out": (y.float() - yr).abs().max().item(),
            "max_err_grad_x": (x.grad.float() - xr.grad).abs().max().item(),
            "max_err_grad_w": (w.grad.float() - wr.grad).abs().max().item()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=98304)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels_check: no CUDA device (the interpreter tests in tests/kernels cover a CPU)", file=sys.stderr)
        return 2
    res = {"card": torch.cuda.get_device_name(), "softcap_ce": check_ce(args.tokens, 8192, 30.0, args.iters),
           "leaky_mlp": check_mlp(args.tokens, 512, 2048, 0.5, args.iters)}
    if args.json:
        print(json.dumps(res))
    else:
        for name in ("softcap_ce", "leaky_mlp"):
            r = res[name]
            errs = ", ".join(f"{k} {v:.2e}" for k, v in r.items() if k.startswith("max_err"))
            print(f"{name} {r['shape']} bf16: fused {r['fused_ms']:.2f} ms, eager {r['eager_ms']:.2f} ms, "
                  f"compiled eager {r['compiled_eager_ms']:.2f} ms; {errs}"
                  + (f"; forward kernel {r['forward_kernel']}, backward kernel {r['backward_kernel']}, "
                     f"pointer kernels {r['fused_pointer_ms']:.2f} ms" if "forward_kernel" in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
