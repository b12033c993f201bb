"""The MLP up-projection fused with its activation: y = leaky_relu(x @ W^T, slope)^2 (a Triton kernel).

The forward's epilogue applies the activation to the fp32 accumulator and also stores the
pre-activation h; the backward's two matmuls (dx = dh @ W, dW = dh^T @ x) form
dh = dy * d/dh leaky(h)^2 = dy * 2 leaky(h) leaky'(h) while loading their operand, so dh is
never written out. One portable kernel (pointer arithmetic, masked tiles: any M, N, K) serves
all three products through strides; a second one does the same on tensor descriptors (Hopper's
TMA). mlp_kernel_variant() picks the descriptor kernel, for the forward and for the backward
alike, on a CUDA device of compute capability 9 or more when every tensor it loads or stores
qualifies (one dtype, last dim contiguous, row strides and base addresses 16-byte aligned); the
pointer kernel otherwise. PGOLF_MLP_KERNEL=pointer forces the pointer kernel, =descriptor takes
the descriptor one wherever the tensors qualify (any device Triton runs on: the tests use it
under TRITON_INTERPRET=1), =auto (unset) as above. Written from the published description of
record #1855's kernel; the eager functions are the reference and the fallback wherever no
kernel runs.
"""

import os

import torch
import torch.nn.functional as F

from pgolf.kernels.launch import register_op_pair, triton_runs_on

_MLP_STATE: dict = {}
# Tile shape (rows, columns, reduction) and launch shape: a plain Hopper/Ampere choice.
_MLP_TILES = (128, 128, 64)
_MLP_LAUNCH = {"num_warps": 8, "num_stages": 3}


def _mlp_kernels():
    # Keyed by the interpreter switch: triton.jit decides at decoration time whether it compiles.
    key = ("kernels", os.environ.get("TRITON_INTERPRET") == "1")
    if key in _MLP_STATE:
        return _MLP_STATE[key]
    import triton
    import triton.language as tl

    # C[M, N] = A'[M, K] @ B[K, N], every operand addressed by its strides. PROLOGUE: A' =
    # A * 2 leaky(H) leaky'(H) with H (aux) laid out as A (the backward); EPILOGUE: H = C is
    # stored to aux and C becomes leaky(C)^2 (the forward).
    @triton.jit
    def leaky_mm(a_ptr, b_ptr, c_ptr, aux_ptr, M, N, K, s_am, s_ak, s_bk, s_bn, s_cm, s_cn, slope,
                 PROLOGUE: tl.constexpr, EPILOGUE: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(0, K, BK):
            ks = k0 + rk
            a_mask = (rm[:, None] < M) & (ks[None, :] < K)
            a_off = rm[:, None].to(tl.int64) * s_am + ks[None, :].to(tl.int64) * s_ak
            a = tl.load(a_ptr + a_off, mask=a_mask, other=0.0)
            if PROLOGUE:
                h = tl.load(aux_ptr + a_off, mask=a_mask, other=0.0).to(tl.float32)
                a = (a.to(tl.float32) * 2.0 * h * tl.where(h > 0, 1.0, slope * slope)).to(b_ptr.dtype.element_ty)
            b_mask = (ks[:, None] < K) & (rn[None, :] < N)
            b = tl.load(b_ptr + ks[:, None].to(tl.int64) * s_bk + rn[None, :].to(tl.int64) * s_bn,
                        mask=b_mask, other=0.0)
            acc = tl.dot(a, b, acc, input_precision="ieee" if b.dtype == tl.float32 else "tf32")
        c_mask = (rm[:, None] < M) & (rn[None, :] < N)
        c_off = rm[:, None].to(tl.int64) * s_cm + rn[None, :].to(tl.int64) * s_cn
        if EPILOGUE:
            tl.store(aux_ptr + c_off, acc.to(aux_ptr.dtype.element_ty), mask=c_mask)
            lk = tl.where(acc > 0, acc, acc * slope)
            acc = lk * lk
        tl.store(c_ptr + c_off, acc.to(c_ptr.dtype.element_ty), mask=c_mask)

    # leaky_mm on tensor descriptors, C[M, N] = A'[M, K] @ B'[K, N]; A is stored [K, M] when TA.
    # Forward (not PROLOGUE): B stored [N, K], the epilogue. Backward: B stored [K, N], the
    # prologue, H laid out as A. Reads past an edge give zeros and stores clip, so no masks.
    @triton.jit
    def leaky_mm_desc(a_ptr, b_ptr, c_ptr, aux_ptr, M, N, K, s_a, s_b, s_c, slope, TA: tl.constexpr,
                      PROLOGUE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        if TA:
            a_d = tl.make_tensor_descriptor(a_ptr, [K, M], [s_a, 1], [BK, BM])
            h_d = tl.make_tensor_descriptor(aux_ptr, [K, M], [s_a, 1], [BK, BM])
        else:
            a_d = tl.make_tensor_descriptor(a_ptr, [M, K], [s_a, 1], [BM, BK])
            h_d = tl.make_tensor_descriptor(aux_ptr, [M, K], [s_a, 1], [BM, BK])
        if PROLOGUE:
            b_d = tl.make_tensor_descriptor(b_ptr, [K, N], [s_b, 1], [BK, BN])
        else:
            b_d = tl.make_tensor_descriptor(b_ptr, [N, K], [s_b, 1], [BN, BK])
            h_d = tl.make_tensor_descriptor(aux_ptr, [M, N], [s_c, 1], [BM, BN])
        c_d = tl.make_tensor_descriptor(c_ptr, [M, N], [s_c, 1], [BM, BN])
        om = tl.program_id(0) * BM
        on = tl.program_id(1) * BN
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(0, K, BK):
            at = [k0, om] if TA else [om, k0]
            a = a_d.load(at)
            if PROLOGUE:
                h = h_d.load(at).to(tl.float32)
                a = (a.to(tl.float32) * 2.0 * h * tl.where(h > 0, 1.0, slope * slope)).to(b_ptr.dtype.element_ty)
                b = b_d.load([k0, on])
            else:
                b = b_d.load([on, k0]).T
            acc = tl.dot(a.T if TA else a, b, acc, input_precision="ieee" if b.dtype == tl.float32 else "tf32")
        if not PROLOGUE:
            h_d.store([om, on], acc.to(aux_ptr.dtype.element_ty))
            lk = tl.where(acc > 0, acc, acc * slope)
            acc = lk * lk
        c_d.store([om, on], acc.to(c_ptr.dtype.element_ty))

    _MLP_STATE[key] = leaky_mm, leaky_mm_desc
    return leaky_mm, leaky_mm_desc


def _mlp_scratch(size: int, alignment: int, stream):
    # Descriptors made inside a kernel live in global scratch memory that Triton asks for.
    return torch.empty(size, dtype=torch.int8, device="cuda")


def mlp_kernel_variant(*tensors: torch.Tensor) -> str:
    """"descriptor" or "pointer": the kernel that loads and stores these tensors (the forward:
    x [M, K], w [N, K], y and h [M, N]; the backward adds dy, dx, dw); see the module docstring
    for PGOLF_MLP_KERNEL."""
    choice = os.environ.get("PGOLF_MLP_KERNEL", "auto")
    if choice not in ("auto", "descriptor", "pointer"):
        raise ValueError(f"PGOLF_MLP_KERNEL={choice!r}: expected auto, descriptor or pointer")
    x = tensors[0]
    hopper = x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9
    if choice == "pointer" or choice == "auto" and not hopper:
        return "pointer"
    ok = all(t.numel() and t.dtype == x.dtype and t.stride(-1) == 1
             and t.data_ptr() % 16 == t.stride(0) * t.element_size() % 16 == 0 for t in tensors)
    return "descriptor" if ok else "pointer"


def _leaky_mm(a, b, c, aux, m, n, k, a_strides, b_strides, slope, prologue, epilogue):
    if m == 0 or n == 0:
        return
    import triton
    bm, bn, bk = _MLP_TILES
    _mlp_kernels()[0][(triton.cdiv(m, bm), triton.cdiv(n, bn))](
        a, b, c, aux, m, n, k, *a_strides, *b_strides, c.stride(0), c.stride(1), float(slope),
        PROLOGUE=prologue, EPILOGUE=epilogue, BM=bm, BN=bn, BK=bk, **_MLP_LAUNCH)


def _leaky_mm_desc(a, b, c, aux, m, n, k, slope, ta, prologue):
    import triton
    if a.is_cuda:
        triton.set_allocator(_mlp_scratch)  # a context variable: set in the thread that launches
    bm, bn, bk = _MLP_TILES
    _mlp_kernels()[1][(triton.cdiv(m, bm), triton.cdiv(n, bn))](
        a, b, c, aux, m, n, k, a.stride(0), b.stride(0), c.stride(0), float(slope), TA=ta, PROLOGUE=prologue,
        BM=bm, BN=bn, BK=bk, **_MLP_LAUNCH)


def _leaky_grad_factor(h: torch.Tensor, slope: float) -> torch.Tensor:
    # d/dh leaky(h)^2 = 2 leaky(h) leaky'(h): 2h above zero, 2 slope^2 h below.
    return 2.0 * h * torch.where(h > 0, 1.0, slope * slope)


def _linear_leaky2(x, w, slope):
    if not triton_runs_on(x):
        h = F.linear(x, w)
        return (F.leaky_relu(h, slope) if slope > 0 else F.relu(h)).square(), h
    m, k = x.shape
    n = w.shape[0]
    y = x.new_empty(m, n)
    h = torch.empty_like(y)
    if mlp_kernel_variant(x, w, y, h) == "descriptor":
        _leaky_mm_desc(x, w, y, h, m, n, k, slope, False, False)
    else:
        _leaky_mm(x, w, y, h, m, n, k, x.stride(), (w.stride(1), w.stride(0)), slope, False, True)
    return y, h


def _linear_leaky2_backward(dy, h, x, w, slope):
    if not triton_runs_on(x):
        dh = (dy.float() * _leaky_grad_factor(h.float(), slope)).to(x.dtype)
        return dh @ w, dh.t() @ x
    dy, h = dy.contiguous(), h.contiguous()
    m, n = dy.shape
    k = x.shape[1]
    dx = torch.empty_like(x)
    dw = torch.empty_like(w)
    if mlp_kernel_variant(x, w, dy, h, dx, dw) == "descriptor":
        _leaky_mm_desc(dy, w, dx, h, m, k, n, slope, False, True)
        _leaky_mm_desc(dy, x, dw, h, n, k, m, slope, True, True)
    else:
        _leaky_mm(dy, w, dx, h, m, k, n, dy.stride(), w.stride(), slope, True, False)
        _leaky_mm(dy, x, dw, h, n, k, m, (dy.stride(1), dy.stride(0)), x.stride(), slope, True, False)
    return dx, dw


def _linear_leaky2_fake(x, w, slope):
    y = x.new_empty(x.shape[0], w.shape[0])
    return y, torch.empty_like(y)


def _linear_leaky2_backward_fake(dy, h, x, w, slope):
    return torch.empty_like(x), torch.empty_like(w)


def _mlp_setup_context(ctx, inputs, output):
    x, w, slope = inputs
    ctx.save_for_backward(x, w, output[1])
    ctx.slope = slope


def _mlp_autograd_backward(ctx, grad_y, grad_h):
    x, w, h = ctx.saved_tensors
    dx, dw = _MLP_STATE["backward_op"](grad_y, h, x, w, ctx.slope)
    return dx, dw, None


def leaky_mlp_ops():
    """The forward op: (x [M, K], w [N, K], slope) -> (y [M, N], h [M, N] pre-activation)."""
    return register_op_pair(
        _MLP_STATE, "linear_leaky2", _linear_leaky2, _linear_leaky2_fake,
        "(Tensor x, Tensor w, float slope) -> (Tensor, Tensor)", _linear_leaky2_backward,
        _linear_leaky2_backward_fake, "(Tensor dy, Tensor h, Tensor x, Tensor w, float slope) -> (Tensor, Tensor)",
        _mlp_autograd_backward, _mlp_setup_context)


def leaky_relu_squared_linear(x: torch.Tensor, w: torch.Tensor, slope: float) -> torch.Tensor:
    """leaky_relu(F.linear(x, w), slope)^2 (relu^2 at slope 0) through the fused op; x [..., K],
    w [N, K], no bias. Under autocast both operands take the autocast dtype, as F.linear would."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, w = x.to(dt), w.to(dt)
    else:
        w = w.to(x.dtype)
    y, _ = leaky_mlp_ops()(x.reshape(-1, x.shape[-1]).contiguous(), w.contiguous(), float(slope))
    return y.view(*x.shape[:-1], w.shape[0])
