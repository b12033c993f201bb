"""Parameter banks: the 6 matrices of every block stacked into four 3-D parameters.

Banks let Parallel Muon orthogonalize many same-shaped matrices in one batched call and
shard them across ranks. Artifacts and per-layer models use the unbanked names below.
"""

import torch

# bank name -> list of (per-layer name template, offset in units of num_layers)
BANK_LAYOUT: dict[str, list[tuple[str, int]]] = {
    "qo_bank": [("blocks.{i}.attn.c_q.weight", 0), ("blocks.{i}.attn.proj.weight", 1)],
    "kv_bank": [("blocks.{i}.attn.c_k.weight", 0), ("blocks.{i}.attn.c_v.weight", 1)],
    "mlp_up_bank": [("blocks.{i}.mlp.fc.weight", 0)],
    "mlp_down_bank": [("blocks.{i}.mlp.proj.weight", 0)],
}

# Untied MLPs of looped passes (model.loop_untied_mlp): bank name -> per-slot name template.
LOOP_BANK_LAYOUT: dict[str, str] = {
    "loop_mlp_up_bank": "loop_mlps.{i}.fc.weight",
    "loop_mlp_down_bank": "loop_mlps.{i}.proj.weight",
}


def bank_slots(num_layers: int) -> list[tuple[str, int, str]]:
    """(bank, index in bank, per-layer name) for every banked matrix."""
    out = []
    for bank, parts in BANK_LAYOUT.items():
        for template, offset in parts:
            out.extend((bank, offset * num_layers + i, template.format(i=i)) for i in range(num_layers))
    return out


def unbank_state_dict(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Replace bank tensors by per-layer matrices; other entries pass through unchanged."""
    if not any(b in sd for b in BANK_LAYOUT):
        return dict(sd)
    out = {k: v for k, v in sd.items() if k not in BANK_LAYOUT and k not in LOOP_BANK_LAYOUT}
    for bank, idx, name in bank_slots(num_layers):
        out[name] = sd[bank][idx].clone()
    for bank, template in LOOP_BANK_LAYOUT.items():
        for i in range(sd[bank].size(0) if bank in sd else 0):
            out[template.format(i=i)] = sd[bank][i].clone()
    return out


def rebank_state_dict(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Inverse of unbank_state_dict."""
    slots = bank_slots(num_layers)
    names = {name for _, _, name in slots}
    if not names & sd.keys():
        return dict(sd)
    missing = names - sd.keys()
    if missing:
        raise KeyError(f"cannot rebank: missing {sorted(missing)[:3]}...")
    out = {k: v for k, v in sd.items() if k not in names}
    for bank in BANK_LAYOUT:
        members = sorted((idx, name) for b, idx, name in slots if b == bank)
        out[bank] = torch.stack([sd[name] for _, name in members])
    for bank, template in LOOP_BANK_LAYOUT.items():
        n = 0
        while template.format(i=n) in out:
            n += 1
        if n:
            out[bank] = torch.stack([out.pop(template.format(i=i)) for i in range(n)])
    return out


def block_bank_indices(layer: int, num_layers: int) -> dict[str, list[int]]:
    """Which bank rows belong to block `layer`."""
    out: dict[str, list[int]] = {}
    for bank, parts in BANK_LAYOUT.items():
        out[bank] = [offset * num_layers + layer for _, offset in parts]
    return out
