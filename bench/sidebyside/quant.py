"""Side by side: record #1855's quantization (its own functions) against pgolf's record_1855 preset.

Both quantize the SAME weights with the SAME Hessians on CPU in float32: one record-shaped
block (c_q 512x512, c_k / c_v 256x512, proj 512x512, fc 2048x512, mlp.proj 512x2048), a second
block's two MLP matrices, an 8192x512 tied embedding, the sparse gate [8, 12] and a few small
tensors. Weights have heavy-tailed rows (so clipping matters); Hessians come from correlated
activations with uneven column scales, one of them with two dead columns.

    python bench/sidebyside/quant.py --record-script /path/to/train_gpt.py
"""

import argparse
import lzma
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from record_import import import_record  # noqa: E402

from pgolf.config import resolve_config  # noqa: E402
from pgolf.quant.artifact import serialize_payload  # noqa: E402
from pgolf.quant.gptq import gptq_quantize  # noqa: E402
from pgolf.quant.lqer import lqer_correction, lqer_entries  # noqa: E402
from pgolf.quant.policy import dequantize_entry, dequantize_state_dict, quantize_state_dict  # noqa: E402

# The record run's quantization settings (its run command and the log's Hyperparameters block).
RECORD_ENV = {"EMBED_BITS": "7", "MATRIX_BITS": "6", "MLP_CLIP_SIGMAS": "11.5", "ATTN_CLIP_SIGMAS": "13.0",
              "EMBED_CLIP_SIGMAS": "14.0", "MATRIX_CLIP_SIGMAS": "12.85", "GATED_ATTN_QUANT_GATE": "1",
              "LQER_ENABLED": "1", "LQER_ASYM_ENABLED": "1", "LQER_RANK": "4", "LQER_FACTOR_BITS": "4",
              "LQER_ASYM_GROUP": "64", "LQER_TOP_K": "3"}
RECORD_ATTRS = {"embed_bits": 7, "matrix_bits": 6, "mlp_clip_sigmas": 11.5, "attn_clip_sigmas": 13.0,
                "embed_clip_sigmas": 14.0, "matrix_clip_sigmas": 12.85, "gated_attn_quant_gate": True,
                "lqer_enabled": True, "lqer_asym_enabled": True, "lqer_rank": 4, "lqer_factor_bits": 4,
                "lqer_asym_group": 64, "lqer_top_k": 3}
SHAPES = {
    "blocks.0.attn.c_q.weight": (512, 512), "blocks.0.attn.c_k.weight": (256, 512),
    "blocks.0.attn.c_v.weight": (256, 512), "blocks.0.attn.proj.weight": (512, 512),
    "blocks.0.mlp.fc.weight": (2048, 512), "blocks.0.mlp.proj.weight": (512, 2048),
    "blocks.1.mlp.fc.weight": (2048, 512), "blocks.1.mlp.proj.weight": (512, 2048),
    "tok_emb.weight": (8192, 512),
}
REL_TOL = 1e-6


def _weight(g: torch.Generator, rows: int, cols: int, std: float) -> torch.Tensor:
    w = torch.randn(rows, cols, generator=g) * std
    # heavy tails: a few large entries per row, and rows of uneven spread
    spikes = torch.rand(rows, cols, generator=g) < 0.002
    w = w + spikes * torch.randn(rows, cols, generator=g) * 8 * std
    return w * (0.5 + torch.rand(rows, 1, generator=g))


def _hessian(g: torch.Generator, cols: int, n: int, dead: int = 0) -> torch.Tensor:
    mix = torch.randn(cols, cols, generator=g) / cols ** 0.5 * 0.7 + torch.eye(cols)
    x = (torch.randn(n, cols, generator=g) @ mix) * torch.exp(torch.randn(cols, generator=g) * 0.6)
    if dead:
        x[:, :dead] = 0
    return x.T @ x / 16  # the record divides its sums by the calibration batch count


def inputs(seed: int = 1855) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state dict, Hessians): the same tensors go to both sides."""
    g = torch.Generator().manual_seed(seed)
    sd = {n: _weight(g, r, c, 0.012 if n.startswith("tok_emb") else 0.03) for n, (r, c) in SHAPES.items()}
    sd["blocks.0.attn.attn_gate_w"] = torch.randn(8, 12, generator=g) * 0.05
    sd["blocks.0.attn.q_gain"] = torch.full((8,), 5.0)
    sd["blocks.0.attn_scale"] = torch.rand(512, generator=g)
    sd["skip_weights"] = torch.rand(8, 512, generator=g)
    hs = {}
    for name, (_, cols) in SHAPES.items():
        dead = 2 if name == "blocks.0.attn.proj.weight" else 0
        hs[name] = _hessian(g, cols, 2 * cols if cols > 512 else 1536, dead)
    return sd, hs


def _row(quantity, record, pgolf, diff, target, ok) -> dict:
    return {"quantity": quantity, "record": record, "pgolf": pgolf, "diff": diff, "target": target, "ok": bool(ok)}


def _group(name: str) -> str:
    return "embed" if "tok_emb" in name else "mlp" if ".mlp." in name else "attn"


def _pgolf_cfg(**over):
    cfg, _ = resolve_config(preset="record_1855", env={})
    for k, v in over.items():
        setattr(cfg.quant, k, v)
    return cfg.quant


def rows(record_module) -> list[dict]:
    mod = record_module
    h = mod.Hyperparameters()
    for k, v in RECORD_ATTRS.items():  # whatever env the module was imported with
        setattr(h, k, v)
    sd, hs = inputs()
    rec, meta = mod.gptq_mixed_quantize({k: v.clone() for k, v in sd.items()}, {k: v.clone() for k, v in hs.items()}, h)
    rec_dq = mod.dequantize_mixed(rec, meta, sd)
    qcfg = _pgolf_cfg()
    pay, _ = quantize_state_dict(sd, qcfg, hs)
    pg_dq = dequantize_state_dict(pay)
    out = []
    same, total, s_same, s_total = {}, {}, {}, {}
    for name in SHAPES:
        g = _group(name)
        same[g] = same.get(g, 0) + int((rec[name + ".q"] == pay[name]["q"]).sum())
        total[g] = total.get(g, 0) + rec[name + ".q"].numel()
        s_same[g] = s_same.get(g, 0) + int((rec[name + ".scale"] == pay[name]["scale"]).sum())
        s_total[g] = s_total.get(g, 0) + rec[name + ".scale"].numel()
    for g in ("attn", "mlp", "embed"):
        pct = 100.0 * same[g] / total[g]
        out.append(_row(f"GPTQ codes identical, {g} (%)", 100.0, round(pct, 4), round(100 - pct, 4), ">= 99", pct >= 99))
        sp = 100.0 * s_same[g] / s_total[g]
        out.append(_row(f"scales bit-equal, {g} (%)", 100.0, round(sp, 4), round(100 - sp, 4), "100", sp == 100))
    rec_t = sorted(n for n, m in meta.items() if "lqer" in m)
    pg_t = sorted(n[:-len(".lqer_a")] for n in pay if n.endswith(".lqer_a"))
    out.append(_row("LQER targets", ",".join(rec_t), ",".join(pg_t), "", "identical", rec_t == pg_t))
    for name in rec_t:
        w = sd[name].float()
        before = float((w - rec[name + ".q"].float() * rec[name + ".scale"].float()[:, None]).norm())
        r_after = float((w - rec_dq[name].float()).norm())
        p_after = float((w - pg_dq[name]).norm()) if name in pg_dq else float("nan")
        rel = abs(r_after - p_after) / r_after
        out.append(_row(f"LQER ||E|| {name}: {before:.6f} ->", r_after, p_after, f"{rel:.2e} rel", "<= 1e-6 rel",
                        rel <= REL_TOL))
    worst = max(float((rec_dq[n].float() - pg_dq[n]).abs().max()) for n in sd)
    out.append(_row("dequantized weights, max |record - pgolf|", 0.0, worst, worst, "0 (given identical codes)",
                    worst == 0.0))
    gq, pgq = rec["blocks.0.attn.attn_gate_w.gq"], pay["blocks.0.attn.attn_gate_w"]["q"]
    gs, pgs = rec["blocks.0.attn.attn_gate_w.gs"], pay["blocks.0.attn.attn_gate_w"]["scale"]
    out.append(_row("gate int8 codes identical (%)", 100.0, 100.0 * float((gq == pgq).float().mean()), "", "100",
                    torch.equal(gq, pgq)))
    out.append(_row("gate int8 scales bit-equal", True, torch.equal(gs, pgs), "", "True", torch.equal(gs, pgs)))
    rec_fp16 = sorted(n for n, m in meta.items() if "passthrough" in m)
    pg_fp16 = sorted(n for n, e in pay.items() if e["kind"] == "fp16")
    out.append(_row("fp16 passthrough tensors", len(rec_fp16), len(pg_fp16), "", "same set", rec_fp16 == pg_fp16))
    out += _pgolf_own_rows(sd, hs, rec, rec_dq, rec_t, pay)
    return out


def _pgolf_own_rows(sd, hs, rec, rec_dq, rec_t, pay) -> list[dict]:
    """Informative: pgolf's own numerics and LQER format on the same inputs (record_1855_fixed)."""
    out = []
    same = total = 0
    for n in [n for n in SHAPES if n.startswith("blocks.0.")]:
        e = pay[n]
        q = gptq_quantize(sd[n], hs[n], e["scale"].float(), e["bits"], numerics="pgolf")
        same += int((rec[n + ".q"] == q).sum())
        total += q.numel()
    pct = 100.0 * same / total
    out.append(_row("info: block 0 codes identical with gptq_numerics=pgolf (%)", 100.0, round(pct, 4), round(100 - pct, 4),
                    "info", True))
    factors = {"asym": {}, "pgolf": {}}
    for name in rec_t:
        w = sd[name].float()
        err = w - dequantize_entry(pay[name])
        own = lqer_entries(name, err, 4, 4, "pgolf")
        factors["pgolf"].update(own)
        factors["asym"].update({k: v for k, v in pay.items() if k.startswith(name + ".lqer")})
        after = float((err - lqer_correction(dict(own, **{name: pay[name]}), name)).norm())
        out.append(_row(f"info: LQER ||E|| after, asym (record) vs lqer_format=pgolf, {name}",
                        float((w - rec_dq[name].float()).norm()), after, "", "info", True))
    size = {k: len(lzma.compress(serialize_payload(v))) for k, v in factors.items()}
    out.append(_row("info: LQER factor bytes (lzma, byte layout), asym vs lqer_format=pgolf", size["asym"],
                    size["pgolf"], size["pgolf"] - size["asym"], "info", True))
    h = hs["tok_emb.weight"].double()
    w = sd["tok_emb.weight"].double()
    rtn, _ = quantize_state_dict({"tok_emb.weight": sd["tok_emb.weight"]}, _pgolf_cfg(gptq_embed=False, lqer_rank=0))

    def head_err(e):
        e = dequantize_entry(e).double() - w
        return float(((e @ h) * e).sum() / w.numel())
    r, g = head_err(rtn["tok_emb.weight"]), head_err(pay["tok_emb.weight"])
    out.append(_row("info: head output error tr(E H E^T)/n, rounding vs GPTQ (embed int7)", r, g, "", "GPTQ lower",
                    g < r))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record-script", required=True, help="record #1855's train_gpt.py")
    args = ap.parse_args()
    torch.set_num_threads(2)
    mod = import_record(args.record_script, env=RECORD_ENV)
    for r in rows(mod):
        print(f"{'ok ' if r['ok'] else 'BAD'} {r['quantity']}: record={r['record']} pgolf={r['pgolf']} "
              f"diff={r['diff']} target={r['target']}")


if __name__ == "__main__":
    main()
