"""The fused soft-capped cross-entropy kernel (pgolf.kernels.softcap_ce) against the eager loss
pgolf's model computes (F.cross_entropy of cap * tanh(x / cap), mean over counted rows), run by
Triton's CPU interpreter in fp32. Ragged sizes: rows are one per program, vocabularies not a
multiple of the 1,024-column block and not powers of two."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pgolf.kernels.softcap_ce import (
    CE_IGNORE_INDEX,
    softcap_ce_ops,
    softcap_cross_entropy,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runtime import kernel_device  # noqa: E402

pytestmark = [pytest.mark.triton, pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")]
kernel_device()


def _eager(x, t, cap):
    z = cap * torch.tanh(x / cap) if cap > 0 else x
    return F.cross_entropy(z, t)


def _both(x, t, cap):
    """(fused loss, its grad, eager loss, its grad) for the same inputs."""
    xf = x.clone().requires_grad_()
    fused = softcap_cross_entropy(xf, t, cap)
    fused.backward()
    xe = x.clone().requires_grad_()
    eager = _eager(xe, t, cap)
    eager.backward()
    return fused.detach(), xf.grad, eager.detach(), xe.grad


@pytest.mark.parametrize("rows,vocab,cap,scale", [
    (37, 1000, 30.0, 20.0),   # the ragged case: neither a power of two nor a block multiple
    (3, 2500, 30.0, 40.0),    # three blocks, the last one partial
    (5, 1025, 2.0, 100.0),    # small cap, |x| >> cap: tanh saturates, its derivative ~ 0
    (4, 64, 0.0, 3.0),        # cap 0: plain cross-entropy
])
def test_loss_and_gradient_equal_the_eager_path(rows, vocab, cap, scale):
    g = torch.Generator().manual_seed(rows * vocab)
    x = torch.randn(rows, vocab, generator=g) * scale
    t = torch.randint(0, vocab, (rows,), generator=g)
    fused, gf, eager, ge = _both(x, t, cap)
    assert torch.allclose(fused, eager, rtol=1e-5, atol=1e-5), (fused, eager)
    assert gf.shape == x.shape and gf.dtype == x.dtype
    assert torch.allclose(gf, ge, rtol=1e-4, atol=1e-7), (gf - ge).abs().max()


def test_soft_cap_edge_values():
    """x = 0 (uniform softmax, tanh' = 1), |x| far above the cap (tanh = +-1 exactly, tanh' = 0:
    exp must overflow to inf, not nan) and a row mixing both, with the target on each kind."""
    vocab, cap = 300, 5.0
    x = torch.zeros(4, vocab)
    x[1] = torch.linspace(-1e4, 1e4, vocab)
    x[2, ::2] = 1e6
    x[2, 1::2] = -1e6
    x[3, :10] = torch.tensor([0.0, 1e-3, -1e-3, 4.0, -4.0, 50.0, -50.0, 1e30, -1e30, 5.0])
    t = torch.tensor([7, 0, 2, 3])
    fused, gf, eager, ge = _both(x, t, cap)
    assert torch.isfinite(fused) and torch.isfinite(gf).all()
    assert torch.allclose(fused, eager, rtol=1e-5, atol=1e-5), (fused, eager)
    assert torch.allclose(gf, ge, rtol=1e-4, atol=1e-7), (gf - ge).abs().max()
    # The zero row's log-sum-exp is log(V).
    _, lse = softcap_ce_ops()(x[:1].contiguous(), t[:1], cap)
    assert torch.allclose(lse, torch.tensor([torch.log(torch.tensor(float(vocab)))]), atol=1e-5)


def test_ignored_rows_count_neither_loss_nor_gradient():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 130, generator=g) * 10
    t = torch.randint(0, 130, (9,), generator=g)
    t[[0, 4, 8]] = CE_IGNORE_INDEX
    fused, gf, eager, ge = _both(x, t, 30.0)
    assert torch.allclose(fused, eager, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gf, ge, rtol=1e-4, atol=1e-7)
    assert (gf[[0, 4, 8]] == 0).all()


def test_batched_logits_and_the_eager_fallback_agree(monkeypatch):
    """[B, T, V] logits as the model passes them; without the interpreter on a CPU the op runs
    its eager reference, which must give the same loss."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 77, generator=g) * 30
    t = torch.randint(0, 77, (2, 5), generator=g)
    want = _eager(x.flatten(0, 1), t.flatten(), 30.0)
    assert torch.allclose(softcap_cross_entropy(x, t, 30.0), want, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        return  # the interpreter switch does not govern CUDA tensors
    assert torch.allclose(softcap_cross_entropy(x, t, 30.0), want, rtol=1e-6, atol=1e-6)


def test_op_registration_passes_opcheck():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of the op."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 100, generator=g) * 20).requires_grad_()
    t = torch.randint(0, 100, (6,), generator=g)
    torch.library.opcheck(softcap_ce_ops(), (x, t, 30.0))
