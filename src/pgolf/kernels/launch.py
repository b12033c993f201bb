"""When a Triton kernel can run on a tensor: a CUDA tensor with triton importable, or any
tensor under TRITON_INTERPRET=1 (Triton's CPU interpreter, which the tests use)."""

import importlib.util
import os

import torch


def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_runs_on(t: torch.Tensor) -> bool:
    if not triton_importable():
        return False
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def register_op_pair(state: dict, name: str, forward, forward_fake, forward_schema: str, backward, backward_fake,
                     backward_schema: str, autograd_backward, setup_context):
    """Registers `pgolf::name` and its backward `pgolf::name_backward` once, as torch.library
    custom ops with fake implementations (so torch.compile traces through them) and autograd;
    the schemas are spelled out because a minified bundle drops annotations. Keeps both in
    `state` ("op", "backward_op") and returns the forward op."""
    if "op" not in state:
        backward_op = torch.library.custom_op(f"pgolf::{name}_backward", backward, mutates_args=(),
                                              schema=backward_schema)
        backward_op.register_fake(backward_fake)
        op = torch.library.custom_op(f"pgolf::{name}", forward, mutates_args=(), schema=forward_schema)
        op.register_fake(forward_fake)
        op.register_autograd(autograd_backward, setup_context=setup_context)
        state["backward_op"], state["op"] = backward_op, op
    return state["op"]
