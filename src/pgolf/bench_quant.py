"""`pgolf bench quant`: quantization methods compared on a run's own trained weights (bytes
per tensor group, post-quantization bpb and its penalty against the float model, seconds)."""

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from pgolf.atomic import atomic_write
from pgolf.errors import BenchError
from pgolf.config import apply_sets, finalize_config
from pgolf.config_tree import Config
from pgolf.data.paths import load_val
from pgolf.dist import Comm
from pgolf.eval.bpb import eval_plain
from pgolf.hw import device_label, pick_device
from pgolf.model.build import model_from_state
from pgolf.quant.artifact import build_artifact, group_byte_report, unpack_artifact
from pgolf.quant.calibration import calibrate
from pgolf.runfolder import RUN_CONFIG, RUN_FINAL_STATE, open_run, run_file


def parse_quant_variant(spec: str) -> tuple[str, list[str]]:
    """'name:matrix_bits=6,clip_search=row' -> ('name', ['quant.matrix_bits=6', ...])."""
    name, _, body = spec.partition(":")
    sets = [f"quant.{kv.strip()}" for kv in body.split(",") if kv.strip()]
    if not name or not sets:
        raise BenchError(f"quant variant {spec!r}: expected NAME:field=value[,field=value], "
                         "e.g. row6:matrix_bits=6,matrix_method=gptq_lite,clip_search=row")
    return name, sets


# The methods `pgolf bench quant` compares when no --variant is given: each a set of
# QuantConfig overrides on top of the run's own quant section (record_1128: int6/int8, lzma 6).
QUANT_BENCH_METHODS: tuple[str, ...] = (
    "gptq_lite:matrix_method=gptq_lite,clip_rule=quantile,clip_search=matrix",
    "gptq_lite_row:matrix_method=gptq_lite,clip_rule=quantile,clip_search=row",
    "rtn_sdclip:matrix_method=gptq_lite,clip_rule=sdclip",
    "gptq_quantile:matrix_method=gptq,clip_rule=quantile,clip_search=row",
    "gptq_quantile_h:matrix_method=gptq,clip_rule=quantile,clip_search=row,clip_weighting=hessian",
    "gptq_sdclip:matrix_method=gptq,clip_rule=sdclip",
    "gptq_sdclip_h:matrix_method=gptq,clip_rule=sdclip,clip_weighting=hessian",
    "gptq_sdclip_embed:matrix_method=gptq,clip_rule=sdclip,gptq_embed=true",
    "gptq_sdclip_lqer:matrix_method=gptq,clip_rule=sdclip,lqer_rank=4,lqer_top_k=3",
    "gptq_sdclip_mlp5:matrix_method=gptq,clip_rule=sdclip,mlp_bits=5",
    "gptq_sdclip_layout:matrix_method=gptq,clip_rule=sdclip,code_order=columns,fp16_layout=shuffled",
    "gptq_sdclip_self:matrix_method=gptq,clip_rule=sdclip,calib_source=self,calib_seqs=16,calib_seq_len=256",
)


def bench_quant_config(run_dir: str, sets: list[str]) -> Config:
    """The run's saved config (its artifact is not needed: bench quant re-exports the float weights)."""
    return open_run(run_dir, sets, needs=(RUN_CONFIG,)).config


def _calib_key(q) -> tuple:
    return (q.calib_source, q.calib_seqs, q.calib_seq_len, q.calib_temperature, q.gptq_embed)


def bench_quant(cfg: Config, run_dir: str, variants: list[str] | None = None, out: str = "",
                log=None) -> list[dict[str, Any]]:
    """Re-export a trained run's float weights (final_state.pt) under several QuantConfigs and
    evaluate each round trip (plain bpb): bytes per tensor group, total, penalty vs the float
    model, and the seconds of calibration and quantize+compress. Hessians are computed once per
    calibration setting and shared by the variants that use it."""
    state_path = run_file(run_dir, RUN_FINAL_STATE)
    try:
        flat = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling refusals and torn files alike
        raise BenchError(f"{state_path}: not a readable weights file ({type(e).__name__}); "
                         "re-run pgolf train to write it again") from None
    big = [k for k, v in flat.items() if v.dim() == 2 and v.numel() > cfg.quant.small_numel]
    if not big:
        raise BenchError(f"no matrix of {state_path} has more than quant.small_numel={cfg.quant.small_numel} "
                         "elements: every method would keep all weights in fp16 and give identical rows; "
                         "lower it (e.g. --set quant.small_numel=0)")
    specs = list(variants or QUANT_BENCH_METHODS)
    for spec in specs:  # every variant must validate before the first one runs
        check = copy.deepcopy(cfg)
        apply_sets(check, parse_quant_variant(spec)[1])
        finalize_config(check)
    device = pick_device(cfg.run.device)
    comm, val = Comm(device), load_val(cfg, device)
    ec = cfg.eval
    score = lambda c, sd: eval_plain(model_from_state(c, sd, device), val.tokens, ec.seq_len, ec.batch_tokens,
                                     val.tables, comm, device)["val_bpb"]
    base = score(cfg, flat)
    rows, calib_cache = [], {}
    for spec in specs:
        name, sets = parse_quant_variant(spec)
        vcfg = copy.deepcopy(cfg)
        apply_sets(vcfg, sets)
        q, hessians, calib_s = vcfg.quant, None, 0.0
        if q.matrix_method == "gptq":
            key = _calib_key(q)
            if key not in calib_cache:
                t0 = time.perf_counter()
                calib_cache[key] = (calibrate(vcfg, flat, device)[0], time.perf_counter() - t0)
            hessians, calib_s = calib_cache[key]
        t0 = time.perf_counter()
        payload: dict = {}
        blob, stats = build_artifact(flat, q, hessians=hessians, payload_out=payload)
        pack_s = time.perf_counter() - t0
        sd, _ = unpack_artifact(blob)
        bpb = score(vcfg, sd)
        rows.append({"variant": name, "settings": ",".join(s[len("quant."):] for s in sets),
                     "model_bytes": len(blob), "val_bpb": bpb, "float_val_bpb": base,
                     "penalty_bpb": bpb - base, "calib_seconds": round(calib_s, 3),
                     "pack_seconds": round(pack_s, 3), "groups": group_byte_report(payload, q),
                     "lqer_tensors": sorted(n for n, e in payload.items() if e.get("category") == "lqer")})
        if log:
            log(format_quant(rows[-1:]).splitlines()[-1])
    if out:
        # Results are committed: name the run, not this machine's path to it.
        _write_json(out, {"run_dir": f"<local>/{Path(run_dir).resolve().name}", "device": device_label(device), "torch": torch.__version__,
                                "eval_tokens": int(val.tokens.numel() - 1), "float_val_bpb": base, "rows": rows})
    return rows


def _write_json(path: str, obj: Any) -> None:
    atomic_write(Path(path), lambda f: f.write(json.dumps(obj, indent=2).encode()), overwrite=True)


def format_quant(rows: list[dict[str, Any]]) -> str:
    groups = sorted({g for r in rows for g in r.get("groups", {})} - {"raw"})
    out = [f"float (unquantized) val_bpb: {rows[0]['float_val_bpb']:.5f}" if rows else "no variants",
           "| variant | model bytes | " + " | ".join(f"{g} B" for g in groups) + " | val_bpb | penalty | calib s | "
           "pack s |", "|---|---:|" + "---:|" * len(groups) + "---:|---:|---:|---:|"]
    for r in rows:
        gb = " | ".join(f"{r['groups'][g]['compressed_bytes']:,}" if g in r.get("groups", {}) else "-"
                        for g in groups)
        out.append(f"| {r['variant']} | {r['model_bytes']:,} | {gb} | {r['val_bpb']:.5f} | "
                   f"{r['penalty_bpb']:+.5f} | {r.get('calib_seconds', 0.0):.1f} | {r['pack_seconds']:.1f} |")
    return "\n".join(out)
