"""The one place that decides hardware and precision: device, compute dtype, attention
kernel, compilation, fused optimizer and Triton kernels, pinned host memory, device syncs.

Everything else asks this module instead of probing for itself, so switching a policy
(say, bf16 on CPU, or FA3 off) is one edit here. Optional kernels are imported lazily
with a fallback (the bundled train_gpt.py must run where they are absent).
"""

import importlib.util
import linecache
import os
from dataclasses import dataclass

import torch

from pgolf.errors import PgolfError
from pgolf.kernels.leaky_mlp import leaky_mlp_ops, leaky_relu_squared_linear
from pgolf.kernels.softcap_ce import softcap_ce_ops, softcap_cross_entropy

ATTENTION_BACKENDS = ("auto", "fa3", "sdpa", "math")


def pick_device(requested: str = "auto") -> torch.device:
    """run.device -> the torch device (under torchrun, this rank's GPU)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise PgolfError("run.device=cuda but this torch build sees no CUDA device "
                             f"(torch {torch.__version__}): use run.device=cpu or auto, or a CUDA build of torch")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(requested)


def compute_autocast(device: torch.device):
    """bf16 compute over fp32 weights on GPUs; plain fp32 on CPU, where bf16 matmuls are
    slow and tests want exactness."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    # `.float()`, except that float64 stays: the legality audit's float64 model copy would
    # otherwise get its NLLs rounded back to float32 ulps.
    return t if t.dtype == torch.float64 else t.float()


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512-BF16 or AMX), from Linux's
    /proc/cpuinfo flags. Elsewhere (unreadable, other systems) False: bf16 there may be
    emulated, tens of times slower than fp32, while fp32 is never the slow choice."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        return False
    return False


@dataclass(frozen=True)
class Precision:
    """The dtype of the work a config allows in bf16 (Muon's Newton-Schulz, its gradient
    reduction, embedding tables with model.embed_dtype = "bf16") on this machine, and why."""
    low: torch.dtype
    reason: str

    def table_dtype(self, embed_dtype: str) -> str:
        """model.embed_dtype as built: the config's choice, or fp32 where bf16 is not run."""
        return embed_dtype if self.low == torch.bfloat16 else "fp32"

    def fields(self, embed_dtype: str) -> dict[str, str]:
        """What `pgolf info` and the run log's event:precision say."""
        low = "bf16" if self.low == torch.bfloat16 else "fp32"
        return {"ns": low, "reduce": low, "tables": self.table_dtype(embed_dtype), "reason": self.reason}


def choose_precision(requested: str, device: torch.device) -> Precision:
    """run.low_precision -> Precision: bf16 on CUDA and on CPUs with native bf16 (the
    reference's numerics), fp32 on other CPUs, where bf16 matmuls are emulated; bf16 or
    fp32 when asked for by name, on any device (the config check refuses other values)."""
    if requested != "auto":
        return Precision(torch.bfloat16 if requested == "bf16" else torch.float32, f"run.low_precision={requested}")
    if device.type == "cuda":
        return Precision(torch.bfloat16, "cuda")
    if device.type == "cpu" and cpu_has_native_bf16():
        return Precision(torch.bfloat16, "cpu_with_native_bf16")
    return Precision(torch.float32, f"{device.type}_without_native_bf16")


def fa3_function():
    """FlashAttention-3's `flash_attn_func` when installed (Hopper only), else None."""
    try:
        from flash_attn_interface import flash_attn_func  # optional Hopper kernel
    except ImportError:
        return None
    return flash_attn_func


def fa3_varlen_function():
    """FlashAttention-3's `flash_attn_varlen_func` (packed documents, cu_seqlens) when installed."""
    try:
        from flash_attn_interface import flash_attn_varlen_func  # optional Hopper kernel
    except ImportError:
        return None
    return flash_attn_varlen_func


def doc_attention_kernel(backend: str) -> str:
    """How document-masked attention runs: `varlen` (FA3 over cu_seqlens, no T x T mask) where
    the FA3 backend was chosen and its varlen entry exists, else `masked` (SDPA/math with a
    same-document causal mask)."""
    return "varlen" if backend == "fa3" and fa3_varlen_function() is not None else "masked"


def resolve_attention_backend(requested: str, device: torch.device) -> str:
    """The backend actually used: fa3 only when importable on a Hopper GPU, else SDPA."""
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(f"model.attn_backend must be one of {ATTENTION_BACKENDS}, got {requested!r}")
    hopper = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9
    if requested in ("auto", "fa3") and hopper and fa3_function() is not None:
        return "fa3"
    return "sdpa" if requested in ("auto", "fa3") else requested


def maybe_compile(fn, enabled: bool):
    """torch.compile as the record does it (static shapes, one graph) when enabled."""
    return torch.compile(fn, dynamic=False, fullgraph=True) if enabled else fn


def fused_adamw(params) -> bool:
    """The fused AdamW kernel exists for CUDA tensors only."""
    return all(p.is_cuda for p in params)


def pinned_staging(device: torch.device) -> bool:
    """Stage host batches in pinned memory: only pays off for copies to a GPU."""
    return device.type == "cuda"


def device_sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU, where work is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _fused_kernel_on(switch: str, name: str, device: torch.device) -> bool:
    # Asked without importing triton (a slow import, and pgolf.kernels.launch stays out of
    # bundles that never run a kernel).
    have_triton = importlib.util.find_spec("triton") is not None
    if switch == "off":
        return False
    # @triton.jit reads each kernel's source through linecache: from its file, or from the text a
    # counted train_gpt.py registered there when it unpacked itself (bundle.pack).
    from_file = bool(linecache.getlines(softcap_ce_ops.__code__.co_filename))
    if switch == "auto":
        return device.type == "cuda" and have_triton and from_file
    if device.type == "cuda" and not (have_triton and from_file):
        why = "triton (pip install triton)" if not have_triton else "a source file (run the readable train_gpt.py)"
        raise PgolfError(f"model.{name}=on needs {why} on a CUDA device, or set it to auto")
    return True


def fused_loss_function(switch: str, device: torch.device):
    """model.fused_ce -> softcap_cross_entropy(logits, targets, cap) (pgolf.kernels), or None for
    the eager loss. The op is registered here, before any torch.compile trace reaches it."""
    if not _fused_kernel_on(switch, "fused_ce", device):
        return None
    softcap_ce_ops()
    return softcap_cross_entropy


def fused_mlp_function(switch: str, device: torch.device):
    """model.fused_mlp -> leaky_relu_squared_linear(x, w_up, slope) (pgolf.kernels), or None for
    the eager F.linear + activation."""
    if not _fused_kernel_on(switch, "fused_mlp", device):
        return None
    leaky_mlp_ops()
    return leaky_relu_squared_linear
