"""Building the model a config asks for on a device: from scratch, or holding given weights."""

import dataclasses

import torch

from pgolf.config_tree import Config
from pgolf.hw import Precision, choose_precision, fused_loss_function, fused_mlp_function, resolve_attention_backend
from pgolf.model.banks import rebank_state_dict
from pgolf.model.gpt import GPT


def build_model(cfg: Config, device: torch.device, precision: Precision | None = None) -> GPT:
    """cfg's model on `device`; bf16 embedding tables only where `precision` (default: the
    choice of run.low_precision on this device) runs bf16, else fp32 ones."""
    precision = precision or choose_precision(cfg.run.low_precision, device)
    mcfg = dataclasses.replace(cfg.model, embed_dtype=precision.table_dtype(cfg.model.embed_dtype))
    model = GPT(mcfg).to(device)
    model.attn_backend = resolve_attention_backend(cfg.model.attn_backend, device)
    model.use_fused_kernels(fused_loss_function(cfg.model.fused_ce, device),
                            fused_mlp_function(cfg.model.fused_mlp, device))
    for dtype in (torch.float32, torch.bfloat16):
        # Filled before any torch.compile trace, so compiled graphs only read the cache.
        for n in {cfg.run.train_seq_len, cfg.eval.seq_len}:
            model.rotary(n, device, dtype)
    return model


def model_from_state(cfg: Config, sd: dict[str, torch.Tensor], device) -> GPT:
    """An eval-mode model holding `sd`, banked or per-layer names alike."""
    return load_state_into(build_model(cfg, device), sd, device)


def load_state_into(model: GPT, sd: dict[str, torch.Tensor], device) -> GPT:
    if model.banked:
        sd = rebank_state_dict(sd, model.num_layers)
    model.load_state_dict({k: v.to(device) for k, v in sd.items()})
    return model.eval()
