"""The fused up-projection on tensor descriptors (Hopper's TMA path, pgolf.kernels.leaky_mlp),
forward and backward, against the eager F.linear + leaky_relu^2 (and its autograd) and against the
pointer kernel, run by Triton's CPU interpreter in fp32 (on a CUDA machine, compiled) with
PGOLF_MLP_KERNEL=descriptor forcing it there. Ragged sizes: rows, N and K off the 128 x 128 x 64
tiles and not powers of two, with row strides kept 16-byte aligned (the interpreter, like the
hardware, refuses others). Which kernel ran is seen at its launch (the `launches` fixture)."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pgolf.kernels import leaky_mlp
from pgolf.kernels.leaky_mlp import (_linear_leaky2, _linear_leaky2_backward, leaky_mlp_ops, leaky_relu_squared_linear,
                                     mlp_kernel_variant)
from pgolf.model.mlp import leaky_relu_squared

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runtime import kernel_device  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = kernel_device()

# (rows, N, K): fp32 rows of N and K elements are 16-byte aligned when N and K are multiples of 4.
ALIGNED_SHAPES = [
    (74, 72, 48),     # one tile each way, nothing a power of two
    (131, 132, 68),   # rows, N and K each a little past one tile
    (5, 20, 12),      # far smaller than a tile
    (200, 36, 140),   # rows past one tile, K past two
]
FORWARD = [("descriptor", "forward")]
BACKWARD = [("descriptor", "backward")] * 2  # dx = dh @ W, then dW = dh^T @ x


@pytest.fixture
def descriptor(monkeypatch):
    monkeypatch.setenv("PGOLF_MLP_KERNEL", "descriptor")


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch from here on, as ("descriptor" | "pointer", "forward" | "backward")."""
    seen = []
    for name, kind, prologue_at in (("_leaky_mm", "pointer", 10), ("_leaky_mm_desc", "descriptor", 9)):
        def spy(*args, _launch=getattr(leaky_mlp, name), _kind=kind, _at=prologue_at):
            seen.append((_kind, "backward" if args[_at] else "forward"))  # the dh prologue: the backward's
            return _launch(*args)
        monkeypatch.setattr(leaky_mlp, name, spy)
    return seen


def _inputs(m, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    dy = torch.randn(m, n, generator=g)
    return x.to(DEVICE), w.to(DEVICE), dy.to(DEVICE)


def _eager(x, w, slope):
    h = F.linear(x, w)
    return leaky_relu_squared(h, slope), h


def _eager_grads(x, w, dy, slope):
    xe, we = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    leaky_relu_squared(F.linear(xe, we), slope).backward(dy)
    return xe.grad, we.grad


@pytest.mark.parametrize("m,n,k", ALIGNED_SHAPES)
@pytest.mark.parametrize("slope", [0.5, 0.0])
def test_descriptor_forward_equals_eager_and_pointer(m, n, k, slope, monkeypatch, launches):
    x, w, _ = _inputs(m, n, k, seed=m + n + k)
    monkeypatch.setenv("PGOLF_MLP_KERNEL", "descriptor")
    assert mlp_kernel_variant(x, w) == "descriptor"
    y, h = _linear_leaky2(x, w, slope)
    assert launches == FORWARD
    y_ref, h_ref = _eager(x, w, slope)
    assert torch.allclose(h, h_ref, rtol=1e-5, atol=1e-5), (h - h_ref).abs().max()
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5), (y - y_ref).abs().max()
    monkeypatch.setenv("PGOLF_MLP_KERNEL", "pointer")
    assert mlp_kernel_variant(x, w) == "pointer"
    y_ptr, h_ptr = _linear_leaky2(x, w, slope)
    assert launches[1:] == [("pointer", "forward")]
    assert torch.allclose(h, h_ptr, rtol=1e-6, atol=1e-6) and torch.allclose(y, y_ptr, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("m,n,k", ALIGNED_SHAPES)
@pytest.mark.parametrize("slope", [0.5, 0.0])
def test_descriptor_backward_equals_eager_and_pointer(m, n, k, slope, monkeypatch, launches):
    """dx = dh @ W and dW = dh^T @ x, dh = dy * d/dh leaky(h)^2 formed as the tiles load."""
    x, w, dy = _inputs(m, n, k, seed=m + n + k)
    h = F.linear(x, w)
    monkeypatch.setenv("PGOLF_MLP_KERNEL", "descriptor")
    dx, dw = _linear_leaky2_backward(dy, h, x, w, slope)
    assert launches == BACKWARD
    dx_ref, dw_ref = _eager_grads(x, w, dy, slope)
    assert torch.allclose(dx, dx_ref, rtol=1e-4, atol=1e-5), (dx - dx_ref).abs().max()
    assert torch.allclose(dw, dw_ref, rtol=1e-4, atol=1e-5), (dw - dw_ref).abs().max()
    monkeypatch.setenv("PGOLF_MLP_KERNEL", "pointer")
    dx_ptr, dw_ptr = _linear_leaky2_backward(dy, h, x, w, slope)
    assert launches[2:] == [("pointer", "backward")] * 2
    assert torch.allclose(dx, dx_ptr, rtol=1e-5, atol=1e-6) and torch.allclose(dw, dw_ptr, rtol=1e-5, atol=1e-6)


def test_op_forward_and_gradients_equal_eager_on_the_descriptor_path(descriptor, launches):
    """Through torch.library and autograd on a [B, T, d] input: both passes on descriptors."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 37, 44, generator=g).to(DEVICE)
    w = (torch.randn(84, 44, generator=g) / 44 ** 0.5).to(DEVICE)
    dy = torch.randn(2, 37, 84, generator=g).to(DEVICE)
    xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = leaky_relu_squared_linear(xf, wf, 0.5)
    y.backward(dy)
    assert launches == FORWARD + BACKWARD
    ref = leaky_relu_squared(F.linear(x, w), 0.5)
    dx_ref, dw_ref = _eager_grads(x, w, dy, 0.5)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5), (y - ref).abs().max()
    assert torch.allclose(xf.grad, dx_ref, rtol=1e-4, atol=1e-5), (xf.grad - dx_ref).abs().max()
    assert torch.allclose(wf.grad, dw_ref, rtol=1e-4, atol=1e-5), (wf.grad - dw_ref).abs().max()


def test_op_registration_passes_opcheck_on_the_descriptor_path(descriptor):
    x, w, _ = _inputs(6, 20, 24, seed=6)
    torch.library.opcheck(leaky_mlp_ops(), (x.requires_grad_(), w.requires_grad_(), 0.5))


def _misaligned(t):
    """t's values in a contiguous tensor 4 bytes into its storage (gradients flow back to t)."""
    t = torch.cat([t.new_zeros(1), t.flatten()])[1:].view(t.shape)
    assert t.is_contiguous() and t.data_ptr() % 16 == 4
    return t


@pytest.mark.parametrize("m,n,k,why,forward,backward", [
    (9, 20, 33, "row stride of x and w: 33 fp32 = 132 bytes", "pointer", "pointer"),
    (9, 30, 24, "row stride of y, h and dy: 30 fp32 = 120 bytes", "pointer", "pointer"),
    (9, 20, 24, "x starts 4 bytes into its storage", "pointer", "pointer"),
    (9, 20, 24, "dy starts 4 bytes into its storage", "descriptor", "pointer"),
])
def test_unaligned_tensors_fall_back_to_the_pointer_kernel(m, n, k, why, forward, backward, descriptor, launches):
    x, w, dy = _inputs(m, n, k, seed=k)
    xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = leaky_relu_squared_linear(_misaligned(xf) if why.startswith("x ") else xf, wf, 0.5)
    y.backward(_misaligned(dy) if why.startswith("dy ") else dy)
    assert launches == [(forward, "forward")] + [(backward, "backward")] * 2, why
    y_ref, _ = _eager(x, w, 0.5)
    dx_ref, dw_ref = _eager_grads(x, w, dy, 0.5)
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(xf.grad, dx_ref, rtol=1e-4, atol=1e-5) and torch.allclose(wf.grad, dw_ref, rtol=1e-4, atol=1e-5)


def test_the_switch_picks_the_kernel(monkeypatch):
    """auto: the descriptor kernel only on a CUDA device of compute capability 9+; pointer: never."""
    x, w, _ = _inputs(8, 16, 16, seed=1)
    monkeypatch.setenv("PGOLF_MLP_KERNEL", "pointer")
    assert mlp_kernel_variant(x, w) == "pointer"
    monkeypatch.delenv("PGOLF_MLP_KERNEL")
    hopper = x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9
    assert mlp_kernel_variant(x, w) == ("descriptor" if hopper else "pointer")
    monkeypatch.setenv("PGOLF_MLP_KERNEL", "tma")
    with pytest.raises(ValueError, match="PGOLF_MLP_KERNEL='tma'"):
        mlp_kernel_variant(x, w)


@pytest.mark.parametrize("choice,misaligned_dy,expected", [
    ("descriptor", False, ("descriptor", "descriptor")),
    ("descriptor", True, ("descriptor", "pointer")),
    ("pointer", False, ("pointer", "pointer")),
])
def test_kernels_check_reports_the_kernel_each_pass_launched(choice, misaligned_dy, expected, monkeypatch):
    """bench/kernels_check.py's forward_kernel / backward_kernel, and the launchers put back after."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    from kernels_check import mlp_kernels_launched
    monkeypatch.setenv("PGOLF_MLP_KERNEL", choice)
    launchers = leaky_mlp._leaky_mm, leaky_mlp._leaky_mm_desc
    x, w, dy = _inputs(9, 20, 24, seed=2)
    with mlp_kernels_launched() as kernels:
        y = leaky_relu_squared_linear(x.requires_grad_(), w.requires_grad_(), 0.5)
        y.backward(_misaligned(dy) if misaligned_dy else dy)
    assert kernels == {"forward_kernel": expected[0], "backward_kernel": expected[1]}
    assert (leaky_mlp._leaky_mm, leaky_mlp._leaky_mm_desc) == launchers
