"""Soft-capped cross-entropy in one streaming pass over the vocabulary (a Triton kernel).

loss_i = logsumexp_j z_ij - z_i,t_i with z = cap * tanh(x / cap) (cap 0: z = x). The forward
keeps only each row's log-sum-exp; the backward recomputes z from x instead of storing the
capped logits: dL/dx = (softmax(z) - onehot(t)) * (1 - tanh^2) * grad. A row whose target is
CE_IGNORE_INDEX (-100, F.cross_entropy's) has loss and gradient 0 and is not counted in the mean.
Written from the published description of record #1855's kernel; the eager functions below are
the reference and the fallback wherever no kernel runs (pgolf.kernels.launch).
"""

import os

import torch

from pgolf.kernels.launch import register_op_pair, triton_runs_on

CE_IGNORE_INDEX = -100
# Vocabulary columns per step of the streaming loop (8,192 logits = 8 steps).
_CE_BLOCK = 1024
_CE_STATE: dict = {}


def _ce_kernels():
    # Keyed by the interpreter switch: triton.jit decides at decoration time whether it compiles.
    key = ("kernels", os.environ.get("TRITON_INTERPRET") == "1")
    if key in _CE_STATE:
        return _CE_STATE[key]
    import triton
    import triton.language as tl

    # tanh through exp (tl has no tanh everywhere): cap*tanh(x/cap) = cap - 2cap / (exp(2x/cap) + 1),
    # exact at both ends (exp overflows to inf: +cap; underflows to 0: -cap).
    @triton.jit
    def ce_forward(x_ptr, t_ptr, loss_ptr, lse_ptr, V, stride_row, cap,
                   HAS_CAP: tl.constexpr, IGNORE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        base = x_ptr + row.to(tl.int64) * stride_row
        target = tl.load(t_ptr + row)
        cols0 = tl.arange(0, BLOCK)
        m = tl.max(tl.full([BLOCK], float("-inf"), tl.float32), axis=0)
        s = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)
        zt = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)
        for start in range(0, V, BLOCK):
            cols = start + cols0
            mask = cols < V
            x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_CAP:
                z = cap - 2.0 * cap / (tl.exp(2.0 * x / cap) + 1.0)
            else:
                z = x
            z = tl.where(mask, z, float("-inf"))
            m_new = tl.maximum(m, tl.max(z, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
            m = m_new
            zt += tl.sum(tl.where(cols == target, z, 0.0), axis=0)
        lse = m + tl.log(s)
        tl.store(loss_ptr + row, tl.where(target != IGNORE, lse - zt, 0.0))
        tl.store(lse_ptr + row, lse)

    @triton.jit
    def ce_backward(x_ptr, t_ptr, lse_ptr, g_ptr, dx_ptr, V, stride_row, stride_drow, cap,
                    HAS_CAP: tl.constexpr, IGNORE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        base = x_ptr + row.to(tl.int64) * stride_row
        dbase = dx_ptr + row.to(tl.int64) * stride_drow
        target = tl.load(t_ptr + row)
        lse = tl.load(lse_ptr + row)
        g = tl.where(target != IGNORE, tl.load(g_ptr + row).to(tl.float32), 0.0)
        cols0 = tl.arange(0, BLOCK)
        for start in range(0, V, BLOCK):
            cols = start + cols0
            mask = cols < V
            x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_CAP:
                th = 1.0 - 2.0 / (tl.exp(2.0 * x / cap) + 1.0)
                z = cap * th
                dz = 1.0 - th * th
            else:
                z = x
                dz = 1.0
            p = tl.exp(z - lse)
            d = (p - tl.where(cols == target, 1.0, 0.0)) * dz * g
            tl.store(dbase + cols, d.to(dx_ptr.dtype.element_ty), mask=mask)

    _CE_STATE[key] = (ce_forward, ce_backward)
    return _CE_STATE[key]


def _capped(x: torch.Tensor, cap: float) -> torch.Tensor:
    return cap * torch.tanh(x / cap) if cap > 0 else x


def _ce_rows_eager(logits, targets, cap):
    z = _capped(logits.float(), cap)
    lse = torch.logsumexp(z, dim=-1)
    valid = targets != CE_IGNORE_INDEX
    picked = z.gather(1, torch.where(valid, targets, 0).unsqueeze(1)).squeeze(1)
    return torch.where(valid, lse - picked, 0.0), lse


def _ce_rows_backward_eager(logits, targets, lse, grad, cap):
    x = logits.float()
    z = _capped(x, cap)
    valid = targets != CE_IGNORE_INDEX
    d = torch.exp(z - lse.unsqueeze(1))
    d[torch.arange(len(targets), device=x.device)[valid], targets[valid]] -= 1.0
    if cap > 0:
        d = d * (1.0 - torch.tanh(x / cap).square())
    return (d * torch.where(valid, grad, 0.0).unsqueeze(1)).to(logits.dtype)


def _ce_rows(logits, targets, cap):
    if not triton_runs_on(logits):
        return _ce_rows_eager(logits, targets, cap)
    n, v = logits.shape
    loss = torch.empty(n, device=logits.device, dtype=torch.float32)
    lse = torch.empty_like(loss)
    if n:
        fwd, _ = _ce_kernels()
        fwd[(n,)](logits, targets, loss, lse, v, logits.stride(0), float(cap),
                  HAS_CAP=cap > 0, IGNORE=CE_IGNORE_INDEX, BLOCK=_CE_BLOCK, num_warps=8)
    return loss, lse


def _ce_rows_backward(logits, targets, lse, grad, cap):
    if not triton_runs_on(logits):
        return _ce_rows_backward_eager(logits, targets, lse, grad, cap)
    n, v = logits.shape
    dx = torch.empty_like(logits)
    if n:
        _, bwd = _ce_kernels()
        bwd[(n,)](logits, targets, lse, grad.contiguous(), dx, v, logits.stride(0), dx.stride(0), float(cap),
                  HAS_CAP=cap > 0, IGNORE=CE_IGNORE_INDEX, BLOCK=_CE_BLOCK, num_warps=8)
    return dx


def _ce_rows_fake(logits, targets, cap):
    n = logits.shape[0]
    return logits.new_empty(n, dtype=torch.float32), logits.new_empty(n, dtype=torch.float32)


def _ce_rows_backward_fake(logits, targets, lse, grad, cap):
    return torch.empty_like(logits)


def _ce_setup_context(ctx, inputs, output):
    logits, targets, cap = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.cap = cap


def _ce_autograd_backward(ctx, grad_loss, grad_lse):
    logits, targets, lse = ctx.saved_tensors
    return _CE_STATE["backward_op"](logits, targets, lse, grad_loss, ctx.cap), None, None


def softcap_ce_ops():
    """The forward op: (logits [N, V], targets [N] int64, cap) -> (loss [N] fp32, log-sum-exp [N] fp32)."""
    return register_op_pair(
        _CE_STATE, "softcap_ce_rows", _ce_rows, _ce_rows_fake,
        "(Tensor logits, Tensor targets, float cap) -> (Tensor, Tensor)", _ce_rows_backward, _ce_rows_backward_fake,
        "(Tensor logits, Tensor targets, Tensor lse, Tensor grad, float cap) -> Tensor",
        _ce_autograd_backward, _ce_setup_context)


def softcap_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, cap: float) -> torch.Tensor:
    """F.cross_entropy(cap * tanh(logits / cap), targets) (mean over the counted rows) through the
    fused op: logits [..., V] of any float dtype, computed in fp32 without an fp32 copy."""
    x = logits.reshape(-1, logits.shape[-1]).contiguous()
    t = targets.reshape(-1)
    loss, _ = softcap_ce_ops()(x, t, float(cap))
    return loss.sum() / (t != CE_IGNORE_INDEX).sum()
