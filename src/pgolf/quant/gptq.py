"""Full GPTQ (Frantar et al. 2022, https://arxiv.org/abs/2210.17323) on the artifact's grid.

Columns are quantized one at a time; each column's rounding error is spread over the columns
not yet quantized through the Cholesky factor of the damped inverse Hessian, so the layer
output X W^T, not W itself, is what stays close. Per-row scales are fixed before the sweep
(by a clip rule, pgolf.quant.clip), so the codes and scales have exactly the layout of
round-to-nearest and the artifact reads them the same way.

numerics="record" reproduces #1855's sweep: float32 throughout, the act order taken after dead
columns get their unit diagonal (torch's default argsort), dead columns zeroed before the sweep
and their sweep codes kept. pgolf's own ("pgolf") sweeps in float64 and rounds dead columns from
their weights.
"""

import torch
from torch import Tensor

from pgolf.quant.quantizers import QuantError, quant_qmax, quant_row_view


def gptq_inverse_factor(hessian: Tensor, damp: float, perm: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(upper Cholesky factor of (H + damp*mean(diag H)*I)^-1, mask of dead columns) in float64.

    Dead columns (zero diagonal: inputs never seen) get a unit diagonal so the factor exists;
    their weights carry no output error whatever they round to.
    """
    h = hessian.detach().double().clone()
    if perm is not None:
        h = h[perm][:, perm]
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0
    mean = float(torch.diagonal(h).mean())
    h += torch.eye(h.shape[0], dtype=h.dtype) * (damp * mean)
    for extra in (0.0, 1e-6, 1e-4, 1e-2):
        try:
            hh = h + torch.eye(h.shape[0], dtype=h.dtype) * (extra * mean)
            inv = torch.cholesky_inverse(torch.linalg.cholesky(hh))
            return torch.linalg.cholesky(inv, upper=True), dead
        except torch.linalg.LinAlgError:
            continue
    raise QuantError("GPTQ: the calibration Hessian is not positive definite even with damping; "
                     "raise quant.gptq_damp or use more calibration tokens (quant.calib_seqs)")


def _cholesky_upper_inverse(h: Tensor, mean: float) -> Tensor:
    for extra in (0.0, 1e-6, 1e-4, 1e-2):
        try:
            hh = h if extra == 0.0 else h + torch.eye(h.shape[0], dtype=h.dtype) * (extra * mean)
            inv = torch.cholesky_inverse(torch.linalg.cholesky(hh))
            return torch.linalg.cholesky(inv, upper=True)
        except torch.linalg.LinAlgError:
            continue
    raise QuantError("GPTQ: the calibration Hessian is not positive definite even with damping; "
                     "raise quant.gptq_damp or use more calibration tokens (quant.calib_seqs)")


@torch.no_grad()
def gptq_record_quantize(w2: Tensor, hessian: Tensor, scale: Tensor, qmax: int, block_size: int,
                         damp: float, act_order: bool) -> Tensor:
    """#1855's float32 sweep (see the module doc) -> codes [rows, cols] as float32."""
    rows, cols = w2.shape
    h = hessian.detach().float().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    # torch.diag copies: a mean over the contiguous copy sums in the record's order, which the
    # strided view need not (one ulp of damping flips a rounding tie now and then).
    h.diagonal().add_(damp * torch.diag(h).mean())
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(cols)
    W = w2[:, perm].clone()
    W[:, dead[perm]] = 0
    h = h[perm][:, perm]
    hinv = _cholesky_upper_inverse(h, float(torch.diagonal(h).mean()))
    s = scale.float()
    Q = torch.zeros(rows, cols)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, H1 = W[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        Err = torch.zeros(rows, i2 - i1)
        for i in range(i2 - i1):
            col = W1[:, i]
            q = torch.clamp(torch.round(col / s), -qmax, qmax)
            Q[:, i1 + i] = q
            err = (col - q * s) / H1[i, i]
            Err[:, i] = err
            W1[:, i:] -= err.unsqueeze(1) * H1[i, i:].unsqueeze(0)
        if i2 < cols:
            W[:, i2:] -= Err @ hinv[i1:i2, i2:]
    return Q[:, torch.argsort(perm)]


@torch.no_grad()
def gptq_quantize(w: Tensor, hessian: Tensor, scale: Tensor, bits: int, block_size: int = 128,
                  damp: float = 0.01, act_order: bool = True, numerics: str = "pgolf") -> Tensor:
    """GPTQ codes of w ([rows, cols], float) for fixed per-row scales -> int8 codes shaped like w.

    hessian: X^T X of the layer input ([cols, cols]); scale: float32 [rows] (fp16-representable);
    numerics: pgolf | record (quant.gptq_numerics, see the module doc).
    """
    qmax = quant_qmax(bits)
    w2 = quant_row_view(w).double()
    rows, cols = w2.shape
    if hessian.shape != (cols, cols):
        raise QuantError(f"GPTQ: Hessian {tuple(hessian.shape)} does not match a matrix with {cols} columns")
    if block_size < 1:
        raise QuantError(f"quant.gptq_block_size={block_size}; use >= 1")
    if numerics == "record":
        q = gptq_record_quantize(quant_row_view(w), hessian, scale, qmax, block_size, damp, act_order)
        return q.to(torch.int8).reshape(w.shape)
    if numerics != "pgolf":
        raise QuantError(f"quant.gptq_numerics={numerics!r}; use pgolf or record")
    perm = torch.argsort(torch.diagonal(hessian).double(), descending=True, stable=True) if act_order else None
    hinv, dead = gptq_inverse_factor(hessian, damp, perm)
    W = (w2[:, perm] if perm is not None else w2).clone()
    W[:, dead] = 0.0
    s = scale.double().unsqueeze(1)
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, H1 = W[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        Err = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = W1[:, i:i + 1]
            q = torch.clamp(torch.round(col / s), -qmax, qmax)
            Q[:, i1 + i] = q[:, 0]
            err = (col - q * s) / H1[i, i]
            W1[:, i:] -= err @ H1[i:i + 1, i:]
            Err[:, i:i + 1] = err
        W[:, i2:] -= Err @ hinv[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    if dead.any():
        # A dead column's weight is unconstrained by the Hessian: round it plainly.
        dcols = dead if perm is None else dead[torch.argsort(perm)]
        Q[:, dcols] = torch.clamp(torch.round(w2[:, dcols] / s), -qmax, qmax)
    return Q.to(torch.int8).reshape(w.shape)
