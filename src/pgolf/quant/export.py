"""Export: the weights a run ships -> quantized, compressed, budget-checked artifact bytes;
and the round trip every evaluation scores (the model de-quantized from the file the run
wrote). Export writes nothing: the run folder owns the files."""

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from pgolf.config import config_hash, config_to_toml, shippable_config
from pgolf.config_tree import Config
from pgolf.model.banks import unbank_state_dict
from pgolf.model.build import build_model, load_state_into
from pgolf.model.gpt import GPT, count_params
from pgolf.optim.averaging import select_export_state
from pgolf.quant.artifact import artifact_body_cap, budget_report, check_budget, pack_artifact, read_artifact
from pgolf.quant.calibration import calibrate
from pgolf.runlog import RunLog


@dataclass
class ExportResult:
    """What export produced: the exported (banked) state for evaluation, the artifact's
    bytes, and its figures."""

    state: dict = field(repr=False)
    blob: bytes = field(repr=False)
    export_weights: str
    weights_sha256: str
    model_bytes: int
    code_bytes: int
    artifact_bytes: int
    budget_margin: int

    def metrics(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k not in ("state", "blob")}


def export_hessians(cfg: Config, flat: dict[str, torch.Tensor], device, log: RunLog | None = None):
    """Calibration Hessians when quant.matrix_method=gptq, else None (nothing to calibrate)."""
    if cfg.quant.matrix_method != "gptq":
        return None
    hessians, info = calibrate(cfg, flat, device, log.line if log is not None else None)
    if log is not None:
        log.event(event="calibration", **info)
    return hessians


def shippable_config_toml(cfg: Config) -> str:
    """The config without this machine's paths: what travels inside an artifact."""
    return config_to_toml(shippable_config(cfg))


def weights_sha256(sd: dict[str, torch.Tensor]) -> str:
    """Order-independent digest of a state dict's names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def export_weights(model, ema, swa, cfg: Config, log: RunLog) -> tuple[dict, str, dict[str, torch.Tensor]]:
    """(banked state, its label, unbanked flat state) of the weights the run ships."""
    state, label, warning = select_export_state(cfg.schedule.export_weights, model, ema, swa)
    if warning:
        log.event(event="warning", message=warning.replace(" ", "_"))
    return state, label, unbank_state_dict(state, model.num_layers)


def export_artifact(state: dict, label: str, flat: dict[str, torch.Tensor], cfg: Config, code_bytes: int,
                    device, log: RunLog, where: str) -> ExportResult:
    """Quantize + compress the exported weights and check the budget; `where` names the
    file in the over-budget message. Every rank calibrates on the same tokens with the same
    seed, so all hold the same bytes for the budget check."""
    hessians = export_hessians(cfg, flat, device, log)
    blob = pack_artifact(flat, cfg.quant, config_hash(cfg), meta={"config_toml": shippable_config_toml(cfg)},
                         hessians=hessians, log=log.line)
    report = budget_report(len(blob), code_bytes, cfg.quant.max_artifact_bytes)
    check_budget(report, where)
    log.event(event="artifact", export_weights=label, model_bytes=report["model_bytes"],
              code_bytes=code_bytes, artifact_bytes=report["artifact_bytes"], margin=report["margin"])
    return ExportResult(state, blob, label, weights_sha256(flat), report["model_bytes"], report["code_bytes"],
                        report["artifact_bytes"], report["margin"])


def load_round_trip(path: str, cfg: Config, device) -> GPT:
    """The model evaluation always uses: de-quantized from the artifact on disk.

    The artifact may decompress to no more than a model of this config can need, so a
    crafted file cannot balloon memory before it is rejected.
    """
    model = build_model(cfg, device)
    cap = artifact_body_cap(count_params(model))
    return load_state_into(model, read_artifact(path, max_body_bytes=cap)[0], device)
