"""Per-tensor quantization policy of the artifact: which tensor gets which grid.

Order of the rules (first match wins):
  non-float tensor                      -> "raw"   (stored as is)
  numel <= qcfg.small_numel             -> "fp16"  (category small)
  name names an embedding table         -> qcfg.embed_bits per row, clip 0.9999984 (category embed)
  >= 2-D                                -> qcfg.matrix_bits per row, qcfg.matrix_method (category matrix)
  anything else (large 1-D)             -> "fp16"  (category other)
bits == 16 keeps a category in fp16.
"""

from typing import Any

import torch
from torch import Tensor

from pgolf.config import QuantConfig
from pgolf.quant.quantizers import (GPTQ_CLIP_QUANTILES, ROWWISE_CLIP_QUANTILE, QuantError,
                                    dequantize_rows, gptq_lite_quantize, quantize_rows)

EMBED_NAME_KEYS: tuple[str, ...] = ("tok_emb", "bigram.embed", "ve.embed", "lm_head")
MATRIX_METHODS: tuple[str, ...] = ("rowwise", "gptq_lite")


def quant_category(name: str, t: Tensor, small_numel: int) -> str:
    """raw | small | embed | matrix | other (see the module doc)."""
    if not t.is_floating_point():
        return "raw"
    if t.numel() <= small_numel:
        return "small"
    if any(k in name for k in EMBED_NAME_KEYS):
        return "embed"
    return "matrix" if t.dim() >= 2 else "other"


def _policy_check(qcfg: QuantConfig) -> None:
    for what, bits in (("quant.matrix_bits", qcfg.matrix_bits), ("quant.embed_bits", qcfg.embed_bits)):
        if bits != 16 and not 2 <= bits <= 8:
            raise QuantError(f"{what}={bits} is not supported; use 5..8 (or 16 to keep fp16)")
    if qcfg.matrix_method not in MATRIX_METHODS:
        raise QuantError(f"quant.matrix_method={qcfg.matrix_method!r}; use rowwise or gptq_lite")
    if qcfg.clip_search not in ("matrix", "row"):
        raise QuantError(f"quant.clip_search={qcfg.clip_search!r}; use matrix or row")


def _policy_int_entry(t: Tensor, cat: str, qcfg: QuantConfig) -> dict[str, Any]:
    bits = qcfg.embed_bits if cat == "embed" else qcfg.matrix_bits
    if cat == "matrix" and qcfg.matrix_method == "gptq_lite":
        q, s, pick = gptq_lite_quantize(t, bits, qcfg.clip_search, GPTQ_CLIP_QUANTILES)
        clips = sorted({GPTQ_CLIP_QUANTILES[i] for i in pick.tolist()})
        method = f"gptq_lite_{qcfg.clip_search}"
    else:
        q, s = quantize_rows(t, bits, ROWWISE_CLIP_QUANTILE)
        clips, method = [ROWWISE_CLIP_QUANTILE], "rowwise"
    return {"kind": "int", "bits": bits, "method": method, "q": q, "scale": s, "clips": clips}


def quantize_state_dict(sd: dict[str, Tensor], qcfg: QuantConfig
                        ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Quantize a (unbanked) state dict -> (payload, stats).

    payload[name] = {"kind": "int"|"fp16"|"raw", "category", "shape", "dtype", ...}; "int"
    entries hold int8 codes "q" (shaped like the tensor) and fp16 per-row "scale".
    stats = {"categories": {cat: {tensors, params, max_abs_err, mse}}, "tensors": {name: {...}}}.
    """
    _policy_check(qcfg)
    payload: dict[str, dict[str, Any]] = {}
    for name, t in sd.items():
        t = t.detach().cpu()
        cat = quant_category(name, t, qcfg.small_numel)
        if cat != "raw" and not bool(torch.isfinite(t).all()):
            raise QuantError(f"tensor {name} has NaN/inf values; fix training before export")
        bits = {"embed": qcfg.embed_bits, "matrix": qcfg.matrix_bits}.get(cat, 16)
        if cat == "raw":
            e = {"kind": "raw", "data": t.contiguous()}
        elif bits == 16:
            e = {"kind": "fp16", "data": t.to(torch.float16).contiguous()}
        else:
            e = _policy_int_entry(t, cat, qcfg)
        e.update(category=cat, shape=list(t.shape), dtype=str(t.dtype).removeprefix("torch."))
        payload[name] = e
    return payload, quant_error_stats(sd, payload)


def dequantize_entry(e: dict[str, Any]) -> Tensor:
    """One payload entry -> float32 tensor (non-float "raw" entries keep their dtype)."""
    if e["kind"] == "raw":
        return e["data"].clone()
    if e["kind"] == "fp16":
        return e["data"].float().reshape(e["shape"])
    return dequantize_rows(e["q"], e["scale"]).reshape(e["shape"])


def dequantize_state_dict(payload: dict[str, dict[str, Any]]) -> dict[str, Tensor]:
    """payload -> state dict of float32 tensors (non-float tensors pass through)."""
    return {name: dequantize_entry(e) for name, e in payload.items()}


def quant_error_stats(sd: dict[str, Tensor], payload: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-category and per-tensor reconstruction error of a payload against the original."""
    cats: dict[str, dict[str, float]] = {}
    per: dict[str, dict[str, Any]] = {}
    for name, e in payload.items():
        c = cats.setdefault(e["category"], {"tensors": 0, "params": 0, "max_abs_err": 0.0, "sq_err": 0.0})
        n = sd[name].numel()
        c["tensors"] += 1
        c["params"] += n
        if e["kind"] == "raw" or n == 0:
            continue
        d = dequantize_entry(e) - sd[name].detach().cpu().float()
        mx, sq = float(d.abs().max()), float(d.double().pow(2).sum())
        c["max_abs_err"] = max(c["max_abs_err"], mx)
        c["sq_err"] += sq
        per[name] = {"category": e["category"], "kind": e["kind"], "bits": e.get("bits", 16),
                     "clips": e.get("clips", []), "max_abs_err": mx, "mse": sq / n}
    for c in cats.values():
        c["mse"] = c.pop("sq_err") / max(c["params"], 1)
    return {"categories": cats, "tensors": per}
