"""The fused up-projection + leaky_relu(slope)^2 kernel (pgolf.kernels.leaky_mlp) against the
eager path of pgolf's MLP (F.linear, then leaky_relu_squared), forward and both gradients, run
by Triton's CPU interpreter in fp32 (on a CUDA machine, compiled). Ragged sizes: no dimension a
multiple of the 128 x 128 x 64 tiles."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pgolf.kernels.leaky_mlp import leaky_mlp_ops, leaky_relu_squared_linear
from pgolf.model.mlp import leaky_relu_squared

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runtime import kernel_device  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = kernel_device()


def _inputs(x_shape, hidden, seed, x_shift=0.0):
    g = torch.Generator().manual_seed(seed)
    k = x_shape[-1]
    x = torch.randn(*x_shape, generator=g) + x_shift
    w = torch.randn(hidden, k, generator=g) / k ** 0.5
    dy = torch.randn(*x_shape[:-1], hidden, generator=g)
    return x.to(DEVICE), w.to(DEVICE), dy.to(DEVICE)


def _check(x, w, dy, slope):
    xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = leaky_relu_squared_linear(xf, wf, slope)
    y.backward(dy)
    xe, we = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = leaky_relu_squared(F.linear(xe, we), slope)
    ref.backward(dy)
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5), (y - ref).abs().max()
    assert torch.allclose(xf.grad, xe.grad, rtol=1e-4, atol=1e-5), (xf.grad - xe.grad).abs().max()
    assert torch.allclose(wf.grad, we.grad, rtol=1e-4, atol=1e-5), (wf.grad - we.grad).abs().max()
    return y


@pytest.mark.parametrize("x_shape,hidden,slope", [
    ((2, 37, 48), 72, 0.5),   # the record's slope; [B, T, d] input, 74 rows
    ((37, 40), 130, 0.5),     # hidden past one 128-wide tile
    ((5, 33), 130, 0.0),      # slope 0: relu^2
    ((3, 70), 16, 0.2),       # reduction past one 64-deep tile
])
def test_output_and_gradients_equal_the_eager_path(x_shape, hidden, slope):
    _check(*_inputs(x_shape, hidden, seed=hidden + len(x_shape)), slope)


def test_negative_pre_activations_take_the_slope():
    """Every pre-activation below zero: y = slope^2 h^2, dy/dh = 2 slope^2 h, for two slopes."""
    x, w, dy = _inputs((9, 24), 20, seed=5)
    x, w = x.abs() + 0.1, -w.abs()
    for slope in (0.5, 0.25):
        y = _check(x, w, dy, slope)
        h = F.linear(x, w)
        assert (h < 0).all()
        assert torch.allclose(y, slope ** 2 * h.square(), rtol=1e-5, atol=1e-6)


def test_op_registration_passes_opcheck():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of the op."""
    x, w, _ = _inputs((6, 20), 24, seed=6)
    torch.library.opcheck(leaky_mlp_ops(), (x.requires_grad_(), w.requires_grad_(), 0.5))
