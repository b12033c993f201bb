"""Muon: momentum + Newton–Schulz orthogonalized updates for block matrices.

Params are 2-D matrices or 3-D banks [n, rows, cols] (each [i] an independent matrix).
The same code path serves one process (no-op `Comm`) and many ("Parallel Muon"):

1. `launch_reduce_scatter()` (right after backward, instead of an all-reduce): each
   param's grad, viewed as a bank [n, r, c], is cast to bf16, zero-padded to n_pad (a
   multiple of world_size) and reduce-scattered (average) asynchronously, biggest param
   first, so rank k receives the mean grads of matrices [k*s, (k+1)*s), s = n_pad/world.
   On one process both collectives are identities and are skipped.
2. `step()`: per param in the same order, wait, Nesterov momentum on the local shard
   (a buffer of the shard only, fp32 unless momentum_dtype says bf16), batched Newton–Schulz, scale by sqrt(max(1, r/c)),
   async all-gather of the update; the previous param's gathered update is applied while
   the current one is orthogonalized (decoupled weight decay, then p -= lr * update).

Checkpoints: momentum buffers are shard-local, so `state_dict()` holds only this rank's
shards and records (world_size, rank); `load_state_dict()` refuses a state saved under a
different world size or rank. Save one optimizer state per rank (gathering would need a
collective inside state_dict, which every rank would then have to call in lockstep).
The collective buffers (padded grads, shard, gathered update) are allocated once per param
and reused every step; they are scratch space, not state, and never enter a checkpoint.
"""

import math
from typing import Any, Callable, Iterable

import torch

from pgolf.dist import Comm, DoneHandle
from pgolf.optim.errors import OptimError

NS_COEFFS = (3.4445, -4.7750, 2.0315)


# Polar Express (Amsel, Persson, Musco, Gower 2025, https://arxiv.org/abs/2505.16932): one
# (a, b, c) per iteration, optimal for 5 steps (safety factor 2e-2, cushion 2), used by the
# later records; the input is scaled by 1.02 x its Frobenius norm (the safety factor).
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16, coeffs: str = "quintic",
                  safety: float = 1.02, norm_fp32: bool = True) -> torch.Tensor:
    """Approximately orthogonalize each matrix of G [..., m, n].

    coeffs "quintic": the fixed (3.4445, -4.7750, 2.0315) iteration; singular values end
    roughly in [0.7, 1.2] after 5 steps (Muon only needs "near 1"). "polar_express": the
    per-iteration coefficients above (steps beyond 5 repeat the last one), closer to 1; the
    input is divided by `safety` x its Frobenius norm (+ eps). norm_fp32=False takes the norm
    and divides in `dtype` (the norm itself rounded to bf16), as #1855 does.
    """
    if G.ndim < 2:
        raise OptimError(f"newton_schulz: got shape {tuple(G.shape)}; pass a [..., m, n] tensor")
    polar = coeffs == "polar_express"
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        # X X^T is then the small (n x n) Gram matrix: cheaper and better conditioned.
        X = X.mT
    if norm_fp32:
        # The norm in fp32 keeps tiny grads from underflowing to a zero scale in bf16.
        norm = X.float().norm(dim=(-2, -1), keepdim=True) * (safety if polar else 1.0)
        X = (X.float() / (norm + eps)).to(dtype)
    else:
        norm = X.norm(dim=(-2, -1), keepdim=True)
        norm = norm * safety if polar and safety != 1.0 else norm
        X = X / (norm + eps)
    for i in range(steps):
        a, b, c = POLAR_EXPRESS_COEFFS[min(i, len(POLAR_EXPRESS_COEFFS) - 1)] if polar else NS_COEFFS
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


def compile_newton_schulz(shapes: int) -> Callable[..., torch.Tensor]:
    """torch.compile'd newton_schulz with one static graph per input shape, room for `shapes`."""
    # Automatic dynamic shapes would turn the second distinct shape into a symbolic-size
    # graph (generic kernels for every bank); past the recompile limit dynamo silently
    # falls back to eager, so the limit must cover every shape.
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, shapes)
    return torch.compile(newton_schulz, dynamic=False)


def bank_shape(p: torch.Tensor) -> tuple[int, int, int]:
    """(n, rows, cols) of a 2-D matrix (n = 1) or a 3-D bank."""
    if p.ndim == 2:
        return 1, p.shape[0], p.shape[1]
    if p.ndim == 3:
        return p.shape[0], p.shape[1], p.shape[2]
    raise OptimError(f"Muon: param of shape {tuple(p.shape)} is not a 2-D matrix or 3-D bank; "
                     "give it to AdamW instead")


class _Pending:
    """A launched reduce-scatter: handle plus the shard buffer it fills."""

    def __init__(self, p: torch.Tensor, group: dict, handle: Any, shard: torch.Tensor) -> None:
        self.p, self.group, self.handle, self.shard = p, group, handle, shard


class Muon(torch.optim.Optimizer):
    """Muon over 2-D matrices and 3-D banks; parallel over `comm` ranks (see module doc).

    A param without a grad counts as a zero grad (every rank must join every collective),
    so its momentum still decays into it and weight decay still applies.
    """

    def __init__(self, params: Iterable, lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, backend_steps: int = 5, weight_decay: float = 0.0,
                 comm: Comm | None = None, ns_dtype: torch.dtype = torch.bfloat16,
                 reduce_dtype: torch.dtype = torch.bfloat16, compile_ns: bool = False,
                 coeffs: str = "quintic", row_norm: bool = False, pe_safety: float = 1.02,
                 momentum_dtype: torch.dtype = torch.float32, ns_norm_fp32: bool = True,
                 row_norm_clamp: bool = False) -> None:
        if lr < 0 or not 0.0 <= momentum < 1.0 or backend_steps < 1:
            raise OptimError(f"Muon: lr={lr}, momentum={momentum}, backend_steps={backend_steps}; "
                             "need lr >= 0, 0 <= momentum < 1, backend_steps >= 1")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov,
                        backend_steps=backend_steps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.comm = comm if comm is not None else Comm()
        self.ns_dtype = ns_dtype
        self.reduce_dtype = reduce_dtype
        self.compile_ns = compile_ns
        self.coeffs, self.row_norm = coeffs, row_norm
        # #1855's numerics when set: bf16 momentum, bf16 NS norm, no safety factor, clamped row norm.
        self.pe_safety, self.momentum_dtype = pe_safety, momentum_dtype
        self.ns_norm_fp32, self.row_norm_clamp = ns_norm_fp32, row_norm_clamp
        self._ns_fn: Any = None
        self._pending: list[_Pending] | None = None
        # Outside self.state on purpose: state_dict() must not carry scratch buffers.
        self._buffers: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self._order()  # validates shapes up front

    def _order(self) -> list[tuple[torch.Tensor, dict]]:
        pairs = [(p, g) for g in self.param_groups for p in g["params"]]
        for p, _ in pairs:
            bank_shape(p)
        # Biggest first: its collective has the most time to finish behind the others.
        return sorted(pairs, key=lambda pg: -pg[0].numel())

    def _layout(self, p: torch.Tensor) -> tuple[int, int, int, int, int]:
        n, r, c = bank_shape(p)
        world = self.comm.world_size
        n_pad = -(-n // world) * world
        return n, r, c, n_pad, n_pad // world

    def _buffer(self, p: torch.Tensor, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
        """p's persistent buffer `name`, (re)allocated zeroed when first used or its dtype changed."""
        bufs = self._buffers.setdefault(p, {})
        buf = bufs.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
            # Zeros: the pad rows of the reduce-scatter input are never written again.
            buf = bufs[name] = torch.zeros(shape, dtype=dtype, device=device)
        return buf

    def _drop_pending(self) -> None:
        """Finish and forget a launch that was never stepped."""
        # Its collectives may still read or write the buffers that the next launch reuses.
        for item in self._pending or ():
            item.handle.wait()
        self._pending = None

    @torch.no_grad()
    def launch_reduce_scatter(self) -> None:
        """Start the async averaged reduce-scatter of every param's grad (call after backward)."""
        self._drop_pending()
        pending = []
        for p, group in self._order():
            n, r, c, n_pad, s = self._layout(p)
            padded = self._buffer(p, "padded", (n_pad, r, c), self.reduce_dtype, p.device)
            if p.grad is None:
                padded[:n].zero_()
            else:
                padded[:n].copy_(p.grad.reshape(n, r, c))  # casts and pads in one pass
            if self.comm.world_size == 1:
                shard, handle = padded, DoneHandle()
            else:
                shard = self._buffer(p, "shard", (s, r, c), self.reduce_dtype, p.device)
                handle = self.comm.reduce_scatter_avg_async(shard, padded)
            pending.append(_Pending(p, group, handle, shard))
        self._pending = pending

    def _update(self, p: torch.Tensor, group: dict, shard: torch.Tensor) -> torch.Tensor:
        g = shard.to(self.momentum_dtype)
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        mom = group["momentum"]
        buf.mul_(mom).add_(g)
        g = g.add(buf, alpha=mom) if group["nesterov"] else buf
        if self.row_norm:
            # MuonEq-R: equalize the rows before orthogonalizing, so a few large-gradient rows
            # do not dominate the polar factor (the later records' MuonEq-R).
            if self.row_norm_clamp:
                g = g / g.float().norm(dim=-1, keepdim=True).clamp_min(1e-7).to(g.dtype)
            else:
                g = g / (g.norm(dim=-1, keepdim=True) + 1e-7)
        update = self._ns()(g, steps=group["backend_steps"], dtype=self.ns_dtype, coeffs=self.coeffs,
                            safety=self.pe_safety, norm_fp32=self.ns_norm_fp32)
        _, r, c = bank_shape(p)
        return update.mul_(math.sqrt(max(1.0, r / c)))

    def _ns(self) -> Callable[..., torch.Tensor]:
        if self._ns_fn is None:
            if self.compile_ns:
                # Compiled lazily: CPU tests never pay for it; on GPU it fuses the NS chain.
                graphs = {(self._layout(p)[4], *bank_shape(p)[1:], g["backend_steps"])
                          for p, g in self._order()}
                self._ns_fn = compile_newton_schulz(len(graphs))
            else:
                self._ns_fn = newton_schulz
        return self._ns_fn

    @staticmethod
    def _apply(p: torch.Tensor, lr: float, wd: float, handle: Any, full: torch.Tensor) -> None:
        handle.wait()
        n = bank_shape(p)[0]
        if wd != 0.0:
            p.mul_(1.0 - lr * wd)
        update = full[:n].reshape(p.shape)
        if torch.promote_types(p.dtype, update.dtype) != p.dtype:
            update = update.to(p.dtype)  # rounded to p's dtype before the add, as always
        # Otherwise add_ upcasts exactly on the fly: no cast copy of the whole bank.
        p.add_(update, alpha=-lr)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._pending is None:
            self.launch_reduce_scatter()
        pending, self._pending = self._pending, None
        prev = None
        for item in pending:
            p, group = item.p, item.group
            item.handle.wait()
            update = self._update(p, group, item.shard)
            if self.comm.world_size == 1:
                full, handle = update, DoneHandle()
            else:
                n_pad = self._layout(p)[3]
                full = self._buffer(p, "gathered", (n_pad,) + tuple(update.shape[1:]),
                                    update.dtype, update.device)
                handle = self.comm.all_gather_async(full, update.contiguous())
            if prev is not None:
                self._apply(*prev)
            prev = (p, group["lr"], group["weight_decay"], handle, full)
        if prev is not None:
            self._apply(*prev)
        return loss

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["muon_world_size"] = self.comm.world_size
        sd["muon_rank"] = self.comm.rank
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        world, rank = state_dict.get("muon_world_size", 1), state_dict.get("muon_rank", 0)
        if (world, rank) != (self.comm.world_size, self.comm.rank):
            raise OptimError(f"Muon.load_state_dict: state saved by rank {rank} of {world}, loading on "
                             f"rank {self.comm.rank} of {self.comm.world_size}; load each rank's own file")
        self._drop_pending()
        base = {k: v for k, v in state_dict.items() if k not in ("muon_world_size", "muon_rank")}
        super().load_state_dict(base)
        # torch casts loaded state to the param dtype; keep the buffers in Muon's momentum dtype.
        params = [p for g in self.param_groups for p in g["params"]]
        for idx, saved in state_dict["state"].items():
            buf = saved.get("momentum_buffer")
            if buf is not None:
                p = params[idx]
                self.state[p]["momentum_buffer"] = buf.to(device=p.device, dtype=self.momentum_dtype).clone()
