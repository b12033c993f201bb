"""The fused up-projection's forward on tensor descriptors (Hopper's TMA path, pgolf.kernels.
leaky_mlp) against the eager F.linear + leaky_relu^2 and against the pointer kernel, run by
Triton's CPU interpreter in fp32 (on a CUDA machine, compiled) with PGOLF_MLP_KERNEL=descriptor
forcing it there. Ragged sizes: rows, N and K off the 128 x 128 x 64 tiles and not powers of two,
with row strides kept 16-byte aligned (the interpreter, like the hardware, refuses others)."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pgolf.kernels import leaky_mlp
from pgolf.kernels.leaky_mlp import _linear_leaky2, leaky_mlp_ops, leaky_relu_squared_linear, mlp_kernel_variant
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


@pytest.fixture
def descriptor(monkeypatch):
    monkeypatch.setenv("PGOLF_MLP_KERNEL", "descriptor")


def _inputs(m, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    return x.to(DEVICE), w.to(DEVICE)


def _eager(x, w, slope):
    h = F.linear(x, w)
    return leaky_relu_squared(h, slope), h


@pytest.mark.parametrize("m,n,k", ALIGNED_SHAPES)
@pytest.mark.parametrize("slope", [0.5, 0.0])
def test_descriptor_forward_equals_eager_and_pointer(m, n, k, slope, monkeypatch):
    x, w = _inputs(m, n, k, seed=m + n + k)
    monkeypatch.setenv("PGOLF_MLP_KERNEL", "descriptor")
    assert mlp_kernel_variant(x, w) == "descriptor"
    with monkeypatch.context() as mp:  # the pointer kernel must not be what computes it
        mp.setattr(leaky_mlp, "_leaky_mm", lambda *a: pytest.fail("the pointer kernel ran"))
        y, h = _linear_leaky2(x, w, slope)
    y_ref, h_ref = _eager(x, w, slope)
    assert torch.allclose(h, h_ref, rtol=1e-5, atol=1e-5), (h - h_ref).abs().max()
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5), (y - y_ref).abs().max()
    monkeypatch.setenv("PGOLF_MLP_KERNEL", "pointer")
    assert mlp_kernel_variant(x, w) == "pointer"
    y_ptr, h_ptr = _linear_leaky2(x, w, slope)
    assert torch.allclose(h, h_ptr, rtol=1e-6, atol=1e-6) and torch.allclose(y, y_ptr, rtol=1e-6, atol=1e-6)


def test_op_forward_and_gradients_equal_eager_on_the_descriptor_path(descriptor):
    """Through torch.library (autograd: the backward runs the pointer kernel) on a [B, T, d] input."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 37, 44, generator=g).to(DEVICE)
    w = (torch.randn(84, 44, generator=g) / 44 ** 0.5).to(DEVICE)
    dy = torch.randn(2, 37, 84, generator=g).to(DEVICE)
    assert mlp_kernel_variant(x.reshape(-1, 44), w) == "descriptor"
    xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = leaky_relu_squared_linear(xf, wf, 0.5)
    y.backward(dy)
    xe, we = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = leaky_relu_squared(F.linear(xe, we), 0.5)
    ref.backward(dy)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5), (y - ref).abs().max()
    assert torch.allclose(xf.grad, xe.grad, rtol=1e-4, atol=1e-5), (xf.grad - xe.grad).abs().max()
    assert torch.allclose(wf.grad, we.grad, rtol=1e-4, atol=1e-5), (wf.grad - we.grad).abs().max()


def test_op_registration_passes_opcheck_on_the_descriptor_path(descriptor):
    x, w = _inputs(6, 20, 24, seed=6)
    torch.library.opcheck(leaky_mlp_ops(), (x.requires_grad_(), w.requires_grad_(), 0.5))


@pytest.mark.parametrize("m,n,k,why", [
    (9, 20, 33, "row stride of x and w: 33 fp32 = 132 bytes"),
    (9, 30, 24, "row stride of y and h: 30 fp32 = 120 bytes"),
    (9, 20, 24, "x starts 4 bytes into its storage"),
])
def test_unaligned_tensors_fall_back_to_the_pointer_kernel(m, n, k, why, descriptor):
    x, w = _inputs(m, n, k, seed=k)
    if "starts" in why:
        x = torch.cat([x.new_zeros(1), x.flatten()])[1:].view(m, k)
        assert x.data_ptr() % 16 == 4
    assert x.is_contiguous()
    assert mlp_kernel_variant(x, w) == "pointer", why
    y, h = _linear_leaky2(x, w, 0.5)
    y_ref, h_ref = _eager(x, w, 0.5)
    assert torch.allclose(h, h_ref, rtol=1e-5, atol=1e-5) and torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_the_switch_picks_the_kernel(monkeypatch):
    """auto: the descriptor kernel only on a CUDA device of compute capability 9+; pointer: never."""
    x, w = _inputs(8, 16, 16, seed=1)
    monkeypatch.setenv("PGOLF_MLP_KERNEL", "pointer")
    assert mlp_kernel_variant(x, w) == "pointer"
    monkeypatch.delenv("PGOLF_MLP_KERNEL")
    hopper = x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9
    assert mlp_kernel_variant(x, w) == ("descriptor" if hopper else "pointer")
    monkeypatch.setenv("PGOLF_MLP_KERNEL", "tma")
    with pytest.raises(ValueError, match="PGOLF_MLP_KERNEL='tma'"):
        mlp_kernel_variant(x, w)
