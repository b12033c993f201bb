"""Weight averaging: EMA of the parameters, SWA of late snapshots, and export selection.

Both averages cover floating-point *parameters* only (by name from named_parameters()),
held in fp32; buffers (e.g. rotary tables) are not trained, so exports take them from
the live model. `averaged_state(model)` returns a full, loadable model state dict: the
averaged values cast to each entry's dtype, every other entry copied from the model;
tied aliases (a head sharing the embedding) receive the same averaged tensor.
"""

from typing import Any, Iterable

import torch

from pgolf.optim.errors import OptimError

_AVG_EXPORT_MODES = ("auto", "raw", "ema", "swa", "ema_swa")


def _named_float(source: Any) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a module's float params, a state dict, or an iterable of pairs."""
    if isinstance(source, torch.nn.Module):
        pairs: Iterable = source.named_parameters()
    elif isinstance(source, dict):
        pairs = source.items()
    else:
        pairs = source
    return [(n, t) for n, t in pairs if torch.is_tensor(t) and t.is_floating_point()]


def _merge(model: torch.nn.Module | None, avg: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if model is None:
        return {k: v.clone() for k, v in avg.items()}
    canonical = {}
    for name, p in model.named_parameters():
        canonical[id(p)] = name
    alias = {n: canonical.get(id(p), n) for n, p in model.named_parameters(remove_duplicate=False)}
    out = {}
    for key, value in model.state_dict().items():
        src = alias.get(key, key)
        if src in avg:
            out[key] = avg[src].to(device=value.device, dtype=value.dtype).clone()
        else:
            out[key] = value.detach().clone()
    return out


class EMA:
    """fp32 exponential moving average: shadow <- decay * shadow + (1 - decay) * param, computed
    as a lerp (one rounding) or as #1855's scale-then-add ("scale_add")."""

    def __init__(self, model_or_params: Any, decay: float, form: str = "lerp") -> None:
        if not 0.0 <= decay < 1.0:
            raise OptimError(f"EMA decay={decay} is outside [0, 1); use e.g. 0.997")
        if form not in ("lerp", "scale_add"):
            raise OptimError(f"EMA form={form!r} is unknown; use 'lerp' or 'scale_add'")
        self.decay, self.form = decay, form
        self.num_updates = 0
        self.shadow = {n: t.detach().float().clone() for n, t in _named_float(model_or_params)}

    @torch.no_grad()
    def update(self, model_or_params: Any) -> None:
        current = dict(_named_float(model_or_params))
        missing = [n for n in self.shadow if n not in current]
        if missing:
            raise OptimError(f"EMA.update: params {missing[:3]} are missing; pass the model the EMA was built from")
        shadows = list(self.shadow.values())
        values = [current[n].detach().float() for n in self.shadow]
        if self.form == "scale_add":
            # decay * shadow + (1 - decay) * param, rounded as #1855 rounds it (mul_, then add_).
            torch._foreach_mul_(shadows, self.decay)
            torch._foreach_add_(shadows, values, alpha=1.0 - self.decay)
        else:
            torch._foreach_lerp_(shadows, values, 1.0 - self.decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name])

    def averaged_state(self, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        return _merge(model, self.shadow)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise OptimError("EMA.load_state_dict: saved param names differ from this model's; "
                             "load the EMA state of the same architecture")
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        for k, v in state["shadow"].items():
            self.shadow[k] = v.to(device=self.shadow[k].device, dtype=torch.float32).clone()


class SWA:
    """Running fp32 mean of snapshots; `source` says what is snapshotted: "raw" or "ema" weights."""

    def __init__(self, source: str = "raw") -> None:
        if source not in ("raw", "ema"):
            raise OptimError(f"SWA source={source!r} is unknown; use 'raw' or 'ema'")
        self.source = source
        self.count = 0
        self.mean: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def add_snapshot(self, model_or_state: Any) -> None:
        """Fold one snapshot (a module, or any name -> tensor dict such as EMA.shadow) into the mean."""
        current = _named_float(model_or_state)
        if self.count == 0:
            self.mean = {n: t.detach().float().clone() for n, t in current}
        else:
            if {n for n, _ in current} != set(self.mean):
                raise OptimError("SWA.add_snapshot: param names differ from the first snapshot; "
                                 "snapshot the same model every time")
            weight = 1.0 / (self.count + 1)
            for n, t in current:
                self.mean[n].lerp_(t.detach().float(), weight)
        self.count += 1

    def maybe_snapshot(self, model_or_state: Any, step: int, lr_mult: float, every: int,
                       threshold: float) -> bool:
        """Snapshot when lr_mult < threshold and step % every == 0; returns whether it did."""
        if every <= 0:
            raise OptimError(f"swa_every={every} must be a positive number of steps")
        if lr_mult < threshold and step % every == 0:
            self.add_snapshot(model_or_state)
            return True
        return False

    def averaged_state(self, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        return _merge(model, self.mean)

    def state_dict(self) -> dict[str, Any]:
        return {"source": self.source, "count": self.count,
                "mean": {k: v.clone() for k, v in self.mean.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source, self.count = state["source"], state["count"]
        self.mean = {k: v.float().clone() for k, v in state["mean"].items()}


def _check_source(swa: SWA, mode: str) -> None:
    want = "ema" if mode == "ema_swa" else "raw"
    if swa.source != want:
        raise OptimError(f"export_weights={mode!r} needs an SWA of {want} weights, got SWA(source="
                         f"{swa.source!r}); build SWA(source={want!r})")


def select_export_state(mode: str, model: torch.nn.Module, ema: EMA | None,
                        swa: SWA | None) -> tuple[dict[str, torch.Tensor], str, str]:
    """The state dict to export, the label of what was chosen, and a warning ("" if none).

    auto -> ema when an EMA exists, else raw. A missing EMA or an SWA with no snapshots
    falls back (ema_swa -> ema -> raw; swa -> raw) and says so in the warning.
    """
    if mode not in _AVG_EXPORT_MODES:
        raise OptimError(f"export_weights={mode!r} is unknown; use one of {_AVG_EXPORT_MODES}")
    if mode == "auto":
        mode = "ema" if ema is not None else "raw"
    warning = ""
    if mode in ("swa", "ema_swa"):
        if swa is not None:
            _check_source(swa, mode)
        if swa is not None and swa.count > 0:
            return swa.averaged_state(model), mode, ""
        fallback = "ema" if mode == "ema_swa" and ema is not None else "raw"
        warning = f"export_weights={mode}: no SWA snapshots were taken; exporting {fallback} weights"
        mode = fallback
    if mode == "ema":
        if ema is not None:
            return ema.averaged_state(model), "ema", warning
        warning = "export_weights=ema: no EMA was kept; exporting raw weights"
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, "raw", warning
