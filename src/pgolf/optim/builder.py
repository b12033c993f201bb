"""The optimizer pair of a run: Muon for block matrices, AdamW for everything else.

`OptimizerSet.reduce_and_step` owns the whole post-backward sequence, because the order
of clipping, reduction and stepping is what makes a run match the reference:
  (a) clip mode "local": clip all local grads (Muon's too) before any reduction
      (the reference's behaviour: each rank clips its own gradient);
  (b) Muon launches its async reduce-scatters (its grads are never all-reduced);
  (c) the non-Muon grads are averaged over ranks in one flat all-reduce per dtype;
  (d) clip mode "global": clip the reduced non-Muon grads. Muon grads are clipped only in
      local mode: after (b) they exist only as per-rank shards inside Muon;
  (e) AdamW step, (f) Muon step, then grads are set to None.
"""

from typing import Any

import torch

from pgolf.config_tree import OptimConfig
from pgolf.dist import Comm
from pgolf.hw import Precision, fused_adamw
from pgolf.optim.errors import OptimError
from pgolf.optim.muon import Muon

_BUILDER_CLIP_MODES = ("local", "global")


class OptimizerSet:
    """Muon + AdamW driven together; every param group keeps its "base_lr", Muon's its "base_wd"."""

    def __init__(self, muon: Muon, adam: torch.optim.Optimizer, comm: Comm) -> None:
        self.muon, self.adam, self.comm = muon, adam, comm
        self.optimizers = [muon, adam]
        muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
        self.muon_params = [p for g in muon.param_groups for p in g["params"]]
        self.other_params = [p for g in adam.param_groups for p in g["params"]
                             if id(p) not in muon_ids]
        self._flat: dict[torch.dtype, torch.Tensor] = {}  # reused all-reduce buffer per grad dtype

    def set_lr_multiplier(self, mult: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * mult

    def set_muon_momentum(self, momentum: float) -> None:
        for group in self.muon.param_groups:
            group["momentum"] = momentum

    def set_muon_wd_multiplier(self, mult: float) -> None:
        """Muon weight decay = its "base_wd" x mult (the late taper); AdamW's is left alone, as #1729 did.

        Muon reads group["weight_decay"] as a Python float each step: nothing recompiles."""
        for group in self.muon.param_groups:
            # A checkpoint saved before "base_wd" existed loads groups without it; their
            # weight_decay was never tapered, so it is the base.
            base = group.setdefault("base_wd", group["weight_decay"])
            group["weight_decay"] = base * mult

    def all_params(self) -> list[torch.Tensor]:
        return self.muon_params + self.other_params

    @torch.no_grad()
    def _all_reduce_grads(self) -> None:
        if self.comm.world_size <= 1:
            return
        # Every rank must send the same layout, so a missing grad travels as zeros.
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in self.other_params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        for dtype, params in by_dtype.items():
            sizes = [p.numel() for p in params]
            flat = self._flat.get(dtype)
            if flat is None or flat.numel() != sum(sizes) or flat.device != params[0].grad.device:
                flat = self._flat[dtype] = params[0].grad.new_empty(sum(sizes))
            grads = [p.grad for p in params]
            torch.cat([g.reshape(-1) for g in grads], out=flat)
            self.comm.all_reduce_avg(flat)
            # Copied back rather than left as views of `flat`: a grad kept alive into the next
            # step (zero_grad without set_to_none) would otherwise alias the next cat's output.
            torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(flat.split(sizes), grads)])

    def reduce_and_step(self, model: Any, grad_clip_norm: float, clip_mode: str = "local") -> None:
        """Clip, reduce and step both optimizers, then drop the grads (see module doc)."""
        if clip_mode not in _BUILDER_CLIP_MODES:
            raise OptimError(f"grad_clip_mode={clip_mode!r} is unknown; use one of {_BUILDER_CLIP_MODES}")
        if grad_clip_norm > 0 and clip_mode == "local":
            torch.nn.utils.clip_grad_norm_(self.all_params(), grad_clip_norm)
        self.muon.launch_reduce_scatter()
        self._all_reduce_grads()
        if grad_clip_norm > 0 and clip_mode == "global":
            torch.nn.utils.clip_grad_norm_(self.other_params, grad_clip_norm)
        self.adam.step()
        self.muon.step()
        self.zero_grad(set_to_none=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' states; Muon's part is this rank's shard (save one file per rank)."""
        return {"muon": self.muon.state_dict(), "adam": self.adam.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adam.load_state_dict(state["adam"])


def _adam_groups(model: Any, ocfg: OptimConfig) -> list[dict[str, Any]]:
    tied = bool(getattr(model.cfg, "tie_embeddings", True))
    head = getattr(model, "lm_head", None)
    head_params = [] if tied or head is None else [p for p in head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head_params}
    embed = [p for p in model.embedding_params() if id(p) not in head_ids]
    scalars = [p for p in model.scalar_params() if id(p) not in head_ids]
    embed_lr = ocfg.tied_embed_lr if tied else ocfg.embed_lr
    embed_wd = ocfg.adam_wd if ocfg.embed_wd is None else ocfg.embed_wd
    groups = [dict(params=embed, lr=embed_lr, base_lr=embed_lr, weight_decay=embed_wd),
              dict(params=scalars, lr=ocfg.scalar_lr, base_lr=ocfg.scalar_lr)]
    if head_params:
        groups.append(dict(params=head_params, lr=ocfg.head_lr, base_lr=ocfg.head_lr))
    return [g for g in groups if g["params"]]


def build_optimizers(model: Any, ocfg: OptimConfig, comm: Comm | None = None,
                     compile_ns: bool = False, precision: Precision | None = None) -> OptimizerSet:
    """Muon over model.matrix_params(); AdamW over embedding tables, scalars (and an untied head).

    compile_ns=True wraps Newton–Schulz in torch.compile (worth it on GPU only). `precision`
    (hw.choose_precision) sets the dtype of Newton–Schulz and of Muon's gradient reduction;
    None keeps Muon's bf16, the reference's numerics.
    """
    comm = comm if comm is not None else Comm()
    low = torch.bfloat16 if precision is None else precision.low
    matrices = list(model.matrix_params())
    if not matrices:
        raise OptimError("build_optimizers: model.matrix_params() is empty; Muon needs block matrices")
    muon = Muon([dict(params=matrices, base_lr=ocfg.matrix_lr, base_wd=ocfg.muon_wd)], lr=ocfg.matrix_lr,
                momentum=ocfg.muon_momentum, nesterov=ocfg.muon_nesterov,
                backend_steps=ocfg.muon_backend_steps, weight_decay=ocfg.muon_wd, comm=comm,
                compile_ns=compile_ns, ns_dtype=low, reduce_dtype=low, coeffs=ocfg.muon_coeffs, row_norm=ocfg.muon_row_norm,
                pe_safety=ocfg.muon_pe_safety,
                momentum_dtype=torch.bfloat16 if ocfg.muon_momentum_dtype == "bf16" else torch.float32,
                ns_norm_fp32=ocfg.muon_ns_norm_dtype == "fp32", row_norm_clamp=ocfg.muon_row_norm_eps == "clamp")
    groups = _adam_groups(model, ocfg)
    if not groups:
        raise OptimError("build_optimizers: the model has no embedding or scalar params; AdamW needs some")
    _check_disjoint(matrices, groups)
    fused = fused_adamw(p for g in groups for p in g["params"])
    adam = torch.optim.AdamW(groups, betas=(ocfg.beta1, ocfg.beta2), eps=ocfg.adam_eps,
                             weight_decay=ocfg.adam_wd, fused=fused)
    return OptimizerSet(muon, adam, comm)


def _check_disjoint(matrices: list[torch.Tensor], groups: list[dict[str, Any]]) -> None:
    seen = {id(p) for p in matrices}
    for g in groups:
        for p in g["params"]:
            if id(p) in seen:
                raise OptimError(f"build_optimizers: a param of shape {tuple(p.shape)} is in two "
                                 "param lists; matrix/embedding/scalar params must be disjoint")
            seen.add(id(p))
