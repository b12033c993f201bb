"""Per-tensor quantization policy of the artifact: which tensor gets which grid.

Order of the rules (first match wins):
  non-float tensor                      -> "raw"   (stored as is)
  quant.gate_int8, a 2-D *.attn_gate_w
  of 32..8192 elements                  -> int8 per row, scale max|row|/127 (group gate, #1855)
  numel <= qcfg.small_numel             -> "fp16"  (category small)
  name names an embedding table         -> qcfg.embed_bits per row, clip 0.9999984 (category embed)
  >= 2-D                                -> qcfg.matrix_bits per row, qcfg.matrix_method (category matrix)
  anything else (large 1-D)             -> "fp16"  (category other)
bits == 16 keeps a category in fp16. Within a category, the tensor group (attn, mlp, matrix,
embed, bigram, ve) may take its own width (quant.attn_bits ...; 0 = the category's).
Methods of a matrix: rowwise (fixed quantile), gptq_lite (round to nearest, clip by
quant.clip_rule; the reference's GPTQ-lite when that is quantile and unweighted) and gptq
(pgolf.quant.gptq with the calibration Hessians; a matrix without one is rounded). With
quant.clip_rule=sdclip embedding tables take k = quant.sdclip_k_embed, attention and MLP
matrices quant.sdclip_k_attn / _mlp when set (else sdclip_k_matrix); quant.gptq_embed runs
GPTQ on the tied table against the head's Hessian. quant.lqer_rank > 0 adds LQER factors
(pgolf.quant.lqer) for the quant.lqer_top_k tensors with the largest error. The newer paths
(SDClip, Hessian weighting, GPTQ) floor scales at the smallest fp16 normal, not the reference's
1/qmax, which zeroes most of a small-weight row (measured: it hid every clip rule's effect).
"""

import math
from typing import Any, Callable

import torch
from torch import Tensor

from pgolf.config_tree import QuantConfig
from pgolf.progress import Progress
from pgolf.quant.clip import choose_row_scales
from pgolf.quant.gptq import gptq_quantize
from pgolf.quant.lqer import LQER_METHODS, is_lqer_name, lqer_correction, lqer_entries, pick_lqer_targets
from pgolf.quant.quantizers import (GPTQ_CLIP_QUANTILES, QUANT_FP16_TINY, ROWWISE_CLIP_QUANTILE, QuantError,
                                    dequantize_rows, gptq_lite_quantize, peak_grid_codes, quant_codes, quant_qmax,
                                    quant_row_view, quantize_rows)

EMBED_NAME_KEYS: tuple[str, ...] = ("tok_emb", "bigram.embed", "ve.embed", "lm_head")
# Tensor groups that may take their own width, and the field that holds it.
GROUP_BITS_FIELDS = {"attn": "attn_bits", "mlp": "mlp_bits", "bigram": "bigram_bits", "ve": "ve_bits"}
# Attention-gate weights quant.gate_int8 stores as int8 rows: the name's end and the size range.
GATE_NAME_SUFFIX = ".attn_gate_w"
GATE_NUMEL_RANGE = (32, 8192)


def quant_category(name: str, t: Tensor, small_numel: int) -> str:
    """raw | small | embed | matrix | other (see the module doc)."""
    if not t.is_floating_point():
        return "raw"
    if t.numel() <= small_numel:
        return "small"
    if any(k in name for k in EMBED_NAME_KEYS):
        return "embed"
    return "matrix" if t.dim() >= 2 else "other"


def tensor_group(name: str, category: str) -> str:
    """attn | mlp | matrix | embed | bigram | ve for int categories; else the category itself."""
    if category == "embed":
        return "bigram" if "bigram." in name else "ve" if "ve." in name else "embed"
    if category == "matrix":
        return "attn" if ".attn." in name else "mlp" if ".mlp." in name else "matrix"
    return category


def group_bits(qcfg: QuantConfig, group: str) -> int:
    """The width a tensor group is stored at (16 = fp16)."""
    base = qcfg.embed_bits if group in ("embed", "bigram", "ve") else qcfg.matrix_bits
    own = getattr(qcfg, GROUP_BITS_FIELDS[group], 0) if group in GROUP_BITS_FIELDS else 0
    return own or base


def sdclip_k(qcfg: QuantConfig, group: str) -> float:
    """The SDClip k of a tensor group: its own field when set, else the category's."""
    if group in ("embed", "bigram", "ve"):
        return qcfg.sdclip_k_embed
    own = qcfg.sdclip_k_attn if group == "attn" else qcfg.sdclip_k_mlp if group == "mlp" else 0.0
    return own or qcfg.sdclip_k_matrix


def is_gate_tensor(name: str, t: Tensor) -> bool:
    """An attention-gate weight quant.gate_int8 stores as int8 rows."""
    lo, hi = GATE_NUMEL_RANGE
    return t.is_floating_point() and t.dim() == 2 and name.endswith(GATE_NAME_SUFFIX) and lo <= t.numel() <= hi


def gate_int8_entry(t: Tensor) -> dict[str, Any]:
    q, s = peak_grid_codes(t.detach().float(), 127.0, -127, 127)
    return {"kind": "int", "bits": 8, "method": "gate_int8", "q": q, "scale": s, "clips": [1.0]}


def _scales(t: Tensor, bits: int, cat: str, qcfg: QuantConfig, h: Tensor | None, group: str) -> Tensor:
    """Per-row scales by quant.clip_rule (embedding tables keep the fixed quantile unless SDClip)."""
    weight_h = h if qcfg.clip_weighting == "hessian" else None
    unbiased = qcfg.sdclip_std == "unbiased"
    if cat == "embed":
        if qcfg.clip_rule != "sdclip":
            return choose_row_scales(t, bits, "quantile", quantiles=(ROWWISE_CLIP_QUANTILE,), floor=QUANT_FP16_TINY)
        return choose_row_scales(t, bits, "sdclip", sdclip_k(qcfg, group), weight_h, floor=QUANT_FP16_TINY,
                                 unbiased=unbiased)
    return choose_row_scales(t, bits, qcfg.clip_rule, sdclip_k(qcfg, group), weight_h, qcfg.clip_search,
                             GPTQ_CLIP_QUANTILES, floor=QUANT_FP16_TINY, unbiased=unbiased)


def _int_entry(name: str, t: Tensor, cat: str, bits: int, qcfg: QuantConfig,
                      h: Tensor | None) -> dict[str, Any]:
    plain = qcfg.clip_rule == "quantile" and qcfg.clip_weighting == "plain"
    if cat == "matrix" and qcfg.matrix_method == "gptq_lite" and plain:
        q, s, pick = gptq_lite_quantize(t, bits, qcfg.clip_search, GPTQ_CLIP_QUANTILES)
        clips = sorted({GPTQ_CLIP_QUANTILES[i] for i in pick.tolist()})
        return {"kind": "int", "bits": bits, "method": f"gptq_lite_{qcfg.clip_search}", "q": q, "scale": s,
                "clips": clips}
    # Without its own Hessian an embedding table keeps the reference's fixed quantile unless
    # SDClip is asked for: clip_weighting has nothing to weight it with.
    if (cat == "matrix" and qcfg.matrix_method == "rowwise") or (
            cat == "embed" and qcfg.clip_rule != "sdclip" and h is None):
        q, s = quantize_rows(t, bits, ROWWISE_CLIP_QUANTILE)
        return {"kind": "int", "bits": bits, "method": "rowwise", "q": q, "scale": s,
                "clips": [ROWWISE_CLIP_QUANTILE]}
    scale = _scales(t, bits, cat, qcfg, h, tensor_group(name, cat))
    rule = "sdclip" if qcfg.clip_rule == "sdclip" else "quantile"
    if h is not None and qcfg.matrix_method == "gptq":
        q = gptq_quantize(t, h, scale, bits, qcfg.gptq_block_size, qcfg.gptq_damp, qcfg.gptq_act_order,
                          qcfg.gptq_numerics)
        method = f"gptq_{rule}"
    else:
        q = quant_codes(quant_row_view(t), scale, quant_qmax(bits)).to(torch.int8).reshape(t.shape)
        method = f"rtn_{rule}"
    return {"kind": "int", "bits": bits, "method": method, "q": q, "scale": scale.to(torch.float16), "clips": []}


def quantize_state_dict(sd: dict[str, Tensor], qcfg: QuantConfig, hessians: dict[str, Tensor] | None = None,
                        log: Callable[[str], None] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Quantize a (unbanked) state dict -> (payload, stats).

    payload[name] = {"kind": "int"|"fp16"|"raw", "category", "group", "shape", "dtype", ...};
    "int" entries hold int8 codes "q" (shaped like the tensor) and fp16 per-row "scale".
    hessians: calibration input Hessians by tensor name (pgolf.quant.calibration), used by gptq;
    log gets progress lines (GPTQ takes seconds a matrix on a CPU).
    stats = {"categories": {cat: {tensors, params, max_abs_err, mse}}, "tensors": {name: {...}}}.
    """
    hessians = hessians or {}
    use_h = qcfg.matrix_method == "gptq"
    payload: dict[str, dict[str, Any]] = {}
    lines = Progress(log, "quant:quantize tensors", len(sd))
    for i, (name, t) in enumerate(sd.items(), start=1):
        t = t.detach().cpu()
        cat = quant_category(name, t, qcfg.small_numel)
        if cat != "raw" and not bool(torch.isfinite(t).all()):
            raise QuantError(f"tensor {name} has NaN/inf values; fix training before export")
        group = tensor_group(name, cat)
        bits = group_bits(qcfg, group) if cat in ("embed", "matrix") else 16
        if qcfg.gate_int8 and is_gate_tensor(name, t):
            e, group, cat = gate_int8_entry(t), "gate", "small"
        elif cat == "raw":
            e = {"kind": "raw", "data": t.contiguous()}
        elif bits == 16:
            e = {"kind": "fp16", "data": t.to(torch.float16).contiguous()}
        else:
            h = hessians.get(name) if use_h and (cat == "matrix" or qcfg.gptq_embed) else None
            e = _int_entry(name, t, cat, bits, qcfg, h)
        e.update(category=cat, group=group, shape=list(t.shape), dtype=str(t.dtype).removeprefix("torch."))
        payload[name] = e
        lines.step(i)
    if qcfg.lqer_rank > 0:
        _add_lqer(sd, payload, qcfg)
    return payload, quant_error_stats(sd, payload)


def _add_lqer(sd: dict[str, Tensor], payload: dict[str, dict[str, Any]], qcfg: QuantConfig) -> None:
    errs = {n: sd[n].detach().cpu().float() - dequantize_entry(e) for n, e in payload.items()
            if e["kind"] == "int" and e["category"] in ("matrix", "embed")}
    for name in pick_lqer_targets({n: float(e.pow(2).sum()) for n, e in errs.items()}, qcfg.lqer_top_k):
        payload.update(lqer_entries(name, errs[name], qcfg.lqer_rank, qcfg.lqer_bits, qcfg.lqer_format,
                                    qcfg.lqer_asym_group))


def dequantize_entry(e: dict[str, Any]) -> Tensor:
    """One payload entry -> float32 tensor (non-float "raw" entries keep their dtype)."""
    if e["kind"] == "raw":
        return e["data"].clone()
    if e["kind"] == "fp16":
        return e["data"].float().reshape(e["shape"])
    return dequantize_rows(e["q"], e["scale"]).reshape(e["shape"])


def dequantize_state_dict(payload: dict[str, dict[str, Any]]) -> dict[str, Tensor]:
    """payload -> state dict of float32 tensors (non-float tensors pass through), with any
    LQER correction added to its tensor and the factor entries themselves dropped."""
    out = {}
    for name, e in payload.items():
        if is_lqer_name(name) and e.get("method") in LQER_METHODS:
            continue
        t = dequantize_entry(e)
        corr = lqer_correction(payload, name)
        out[name] = t if corr is None else t + corr.reshape(t.shape)
    return out


def quant_error_stats(sd: dict[str, Tensor], payload: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-category and per-tensor reconstruction error of a payload against the original
    (LQER corrections included; their factors count under category lqer)."""
    cats: dict[str, dict[str, float]] = {}
    per: dict[str, dict[str, Any]] = {}
    recon = dequantize_state_dict(payload)
    for name, e in payload.items():
        c = cats.setdefault(e["category"], {"tensors": 0, "params": 0, "max_abs_err": 0.0, "sq_err": 0.0})
        n = math.prod(e["shape"])
        c["tensors"] += 1
        c["params"] += n
        if e["kind"] == "raw" or n == 0 or name not in recon:
            continue
        d = recon[name] - sd[name].detach().cpu().float()
        mx, sq = float(d.abs().max()), float(d.double().pow(2).sum())
        c["max_abs_err"] = max(c["max_abs_err"], mx)
        c["sq_err"] += sq
        per[name] = {"category": e["category"], "group": e.get("group", e["category"]), "kind": e["kind"],
                     "bits": e.get("bits", 16), "method": e.get("method", e["kind"]),
                     "clips": e.get("clips", []), "max_abs_err": mx, "mse": sq / n}
    for c in cats.values():
        c["mse"] = c.pop("sq_err") / max(c["params"], 1)
    return {"categories": cats, "tensors": per}
