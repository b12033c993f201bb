"""Benchmarks behind `pgolf bench`: training throughput, artifact budget, eval modes.

Not part of the shipped train_gpt.py. Every function returns a plain dict (JSON-ready) so
the numbers in docs/benchmarks.md can be regenerated with the exact command shown there.

FLOPs per token (training, forward + backward = 3 x forward, one multiply-add = 2 FLOPs):
    6 * (block matrices + output head vocab x d + BigramHash/VE projections)
  + 6 * L * T * d            causal attention: QK^T and AV cost 2*T*d each per token per
                             layer over the full window, halved by the causal mask, times 3.
For record_1128 at T=2048: 6 x 25.95 M + 6 x 0.52 M + 6 x 0.10 M + 69.2 M = 228.5 M.
Embedding lookups, norms, activations, softmax and the optimizer are not counted.
MFU = achieved FLOP/s / the device's bf16 dense peak (BENCH_BF16_PEAK_TFLOPS).
The eval-mode benchmark lives in pgolf.bench_eval.
"""

import dataclasses
import math
import re
import resource
import statistics
import time
from typing import Any

import torch

from pgolf.bundle.build import bundle_for_config
from pgolf.config import config_hash
from pgolf.config_tree import Config
from pgolf.dist import Comm
from pgolf.errors import BenchError
from pgolf.hw import choose_precision, device_label, pick_device
from pgolf.model.banks import unbank_state_dict
from pgolf.model.build import build_model
from pgolf.model.gpt import GPT, count_params
from pgolf.optim.builder import build_optimizers
from pgolf.quant.artifact import budget_report, build_artifact, unpack_artifact
from pgolf.quant.calibration import collect_hessians, per_layer_model
from pgolf.quant.export import shippable_config_toml
from pgolf.quant.fake_quant import attach_late_qat
from pgolf.train import train_step

# The reference record: 786,432 tokens per 83.4 ms step on 8 H100s (record #1128's log).
BENCH_REF_TOKENS_PER_S_PER_GPU = 1.18e6
# bf16 dense (no sparsity) tensor-core peaks from NVIDIA's data sheets, matched against
# torch.cuda.get_device_name. The SXM H100 reports itself as "H100 80GB HBM3". Variants
# not listed (NVL cards, GH200) have other clocks or power limits: no MFU rather than a
# wrong one.
BENCH_BF16_PEAK_TFLOPS: tuple[tuple[str, float, str], ...] = (
    (r"\bH100\b.*\bPCIe\b", 756.0, "H100 PCIe"),
    (r"\bH100\b.*\b(SXM\w*|HBM3)\b", 989.0, "H100 SXM"),
    (r"\bH200\b(?!.*\bNVL\b)", 989.0, "H200"),
)
BENCH_QAT_CHOICES = ("off", "on")


class _BenchTokens:
    """Stands in for DistributedTokenLoader: fresh uniform random ids drawn on the device, so
    the timed steps measure the model and optimizer, not host-to-device copies (and the model
    cannot memorize a small pool)."""

    def __init__(self, vocab: int, seqs: int, seq_len: int, device, seed: int) -> None:
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.vocab, self.seqs, self.seq_len, self.device = vocab, seqs, seq_len, device

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int):
        if global_tokens != self.seqs * seq_len * grad_accum_steps or seq_len != self.seq_len:
            raise BenchError(f"synthetic batch is {self.seqs}x{self.seq_len} per micro-step; "
                             f"got a request for {global_tokens} tokens / {grad_accum_steps} at T={seq_len}")
        ids = torch.randint(0, self.vocab, (self.seqs, seq_len + 1), generator=self.gen, device=self.device)
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def bench_flops_per_token(model: GPT, seq_len: int) -> dict[str, int]:
    """Training FLOPs per token by the formula in the module docstring, with its parts."""
    cfg = model.cfg
    blocks = sum(p.numel() for p in model.matrix_params())
    head = cfg.vocab_size * cfg.model_dim
    extra = sum(m.proj.weight.numel() for m in (model.bigram, model.ve) if m is not None)
    attention = 6 * model.num_layers * seq_len * cfg.model_dim
    parts = {"block_matrix_params": blocks, "head_params": head, "projection_params": extra,
             "attention_flops": attention}
    parts["flops_per_token"] = 6 * (blocks + head + extra) + attention
    return parts


def _peak_memory(device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"peak_mem_bytes": torch.cuda.max_memory_allocated(device),
                "peak_mem_kind": "torch.cuda.max_memory_allocated (timed steps)"}
    # ru_maxrss is KiB on Linux and covers the whole process, warm-up and model build included.
    return {"peak_mem_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_mem_kind": "process peak RSS (getrusage ru_maxrss)"}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_steps(model, fwd, opt, tokens, cfg: Config, accum: int, device,
                     n: int) -> tuple[list[float], list[float]]:
    """n training steps -> (per-step milliseconds, losses)."""
    times, losses = [], []
    for _ in range(n):
        _sync(device)
        t0 = time.perf_counter()
        loss = train_step(model, fwd, opt, tokens, cfg, accum, device)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
        losses.append(float(loss))
    return times, losses


def bench_micro_batch(cfg: Config, micro_batch_seqs: int) -> None:
    """Set run.train_batch_tokens so each micro-step holds micro_batch_seqs sequences."""
    if micro_batch_seqs < 1:
        raise BenchError(f"--micro-batch-seqs {micro_batch_seqs}: give a positive number of sequences")
    cfg.run.train_batch_tokens = micro_batch_seqs * cfg.run.train_seq_len * cfg.run.accum_world


def bench_peak_tflops(device_name: str, override: float = 0.0) -> tuple[float | None, str]:
    """(bf16 dense peak TFLOP/s, its source) for a device name; (None, why) when unknown."""
    if override > 0:
        return override, "--peak-tflops"
    for pattern, peak, label in BENCH_BF16_PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peak, label
    return None, f"no bf16 peak known for {device_name!r} (pass --peak-tflops)"


def bench_mfu(achieved_tflops: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilization as a fraction of the peak; None without a peak."""
    return achieved_tflops / peak_tflops if peak_tflops else None


def _qat(model, cfg: Config, qat: str):
    """Attach late QAT as training does (when the config has it, or --qat on asks for it);
    `qat` picks which regime is timed: off (most of a run) or on (its last stretch)."""
    if qat not in BENCH_QAT_CHOICES:
        raise BenchError(f"--qat {qat!r}: use one of {', '.join(BENCH_QAT_CHOICES)}")
    if cfg.quant.late_qat_threshold <= 0 and qat == "off":
        return None
    transform = attach_late_qat(model, cfg.quant.matrix_bits, cfg.quant.qat_scope)
    transform.active = qat == "on"
    return transform


class ThroughputRun:
    """cfg's model, optimizer and synthetic tokens in one process that runs all
    run.accum_world micro-steps itself, ready to time steps."""

    def __init__(self, cfg: Config, seed: int, qat: str) -> None:
        r = self.run = cfg.run
        if r.train_batch_tokens % (r.accum_world * r.train_seq_len):
            raise BenchError(f"run.train_batch_tokens {r.train_batch_tokens} is not a multiple of "
                             f"run.accum_world x run.train_seq_len = {r.accum_world * r.train_seq_len}")
        self.cfg, self.accum, self.device = cfg, r.accum_world, pick_device(r.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(seed)
        self.precision = choose_precision(r.low_precision, self.device)
        self.model = build_model(cfg, self.device, self.precision)
        self.transform = _qat(self.model, cfg, qat)
        self.fwd = torch.compile(self.model, dynamic=False, fullgraph=True) if cfg.model.compile else self.model
        self.opt = build_optimizers(self.model, cfg.optim, Comm(self.device), compile_ns=cfg.model.compile,
                                    precision=self.precision)
        self.seqs = r.train_batch_tokens // (self.accum * r.train_seq_len)
        self.tokens = _BenchTokens(cfg.model.vocab_size, self.seqs, r.train_seq_len, self.device, seed)
        self.warm_times: list[float] = []
        self.times: list[float] = []
        self.losses: list[float] = []
        self.warmup_s = 0.0

    def steps(self, n: int, timed: bool = True) -> None:
        t0 = time.perf_counter()
        times, losses = _run_steps(self.model, self.fwd, self.opt, self.tokens, self.cfg, self.accum, self.device, n)
        if timed:
            self.times += times
            self.losses += losses
        else:
            self.warm_times += times
            self.warmup_s += time.perf_counter() - t0

    def report(self, qat: str, peak_tflops: float) -> dict[str, Any]:
        cfg = self.cfg
        out = _throughput_report(cfg, self.model, self.device, self.accum, self.seqs, self.times, self.losses,
                                 len(self.warm_times), self.warmup_s)
        # The first step pays for tracing, compiling and autotuning (model and Newton-Schulz);
        # its excess over a steady step is the compile cost a run's priming absorbs.
        first_ms = (self.warm_times or self.times)[0]
        peak, source = bench_peak_tflops(out["device"], peak_tflops)
        out.update(first_step_s=first_ms / 1000.0,
                   compile_s=max(0.0, first_ms - out["median_ms"]) / 1000.0 if cfg.model.compile else None,
                   qat="none" if self.transform is None else qat,
                   qat_scope=cfg.quant.qat_scope if self.transform else None,
                   peak_bf16_tflops=peak, peak_source=source, mfu=bench_mfu(out["achieved_tflops"], peak),
                   precision=self.precision.fields(cfg.model.embed_dtype))
        return out


BENCH_PRECISION_CHOICES = ("auto", "bf16", "fp32", "both")


def bench_throughput(cfg: Config, steps: int = 20, warmup: int = 3, seed: int = 0, qat: str = "off",
                     peak_tflops: float = 0.0, precision: str | None = None) -> dict[str, Any]:
    """Time `steps` training steps (after `warmup` untimed ones) of cfg's model on synthetic
    tokens, under run.low_precision = `precision` (None: the config's). "both" builds a bf16
    and an fp32 twin and alternates their timed steps, so on a shared machine both see the
    same load: {"bf16": report, "fp32": report, "bf16_over_fp32": ratio of the medians,
    "paired_ratio_median": median of the adjacent steps' ratios}."""
    if steps < 1 or warmup < 0:
        raise BenchError(f"--steps {steps} --warmup {warmup}: need steps >= 1 and warmup >= 0")
    if precision is not None and precision not in BENCH_PRECISION_CHOICES:
        raise BenchError(f"--precision {precision!r}: use one of {', '.join(BENCH_PRECISION_CHOICES)}")
    names = ("bf16", "fp32") if precision == "both" else (precision or cfg.run.low_precision,)
    runs = {p: ThroughputRun(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, low_precision=p)), seed, qat)
            for p in names}
    for run in runs.values():
        run.steps(warmup, timed=False)
    if runs[names[0]].device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runs[names[0]].device)
    for _ in range(steps):
        for run in runs.values():
            run.steps(1)
    out = {p: run.report(qat, peak_tflops) for p, run in runs.items()}
    if precision != "both":
        return out[names[0]]
    pairs = [b / f for b, f in zip(runs["bf16"].times, runs["fp32"].times)]
    return {**out, "bf16_over_fp32": out["bf16"]["median_ms"] / out["fp32"]["median_ms"],
            "paired_ratio_median": statistics.median(pairs)}


def _throughput_report(cfg, model, device, accum, seqs, times, losses, warmup, warmup_s) -> dict[str, Any]:
    median_ms = statistics.median(times)
    tok_s = cfg.run.train_batch_tokens / (median_ms / 1000.0)
    flops = bench_flops_per_token(model, cfg.run.train_seq_len)
    gpu = device.type == "cuda"
    out = {
        "device": device_label(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "params": count_params(model), "arch": cfg.model.arch, "compile": cfg.model.compile,
        "seq_len": cfg.run.train_seq_len, "micro_batch_seqs": seqs, "grad_accum": accum,
        "tokens_per_step": cfg.run.train_batch_tokens, "warmup_steps": warmup,
        "warmup_s": round(warmup_s, 3), "steps": len(times),
        "median_ms": median_ms, "mean_ms": statistics.fmean(times), "min_ms": min(times), "max_ms": max(times),
        "tokens_per_s": tok_s, "tokens_per_s_per_gpu": tok_s if gpu else None,
        **flops, "achieved_tflops": flops["flops_per_token"] * tok_s / 1e12,
        "ref_tokens_per_s_per_gpu": BENCH_REF_TOKENS_PER_S_PER_GPU,
        "ratio_to_ref": tok_s / BENCH_REF_TOKENS_PER_S_PER_GPU if gpu else None,
        "loss_first": losses[0], "loss_last": losses[-1],
    }
    out.update(_peak_memory(device))
    return out


def _format_one_throughput(res: dict[str, Any]) -> str:
    gpu = res["tokens_per_s_per_gpu"] is not None
    mfu = res.get("mfu")
    compile_s = res.get("compile_s")
    lines = [
        f"device: {res['device']} (torch {res['torch']}, {res['threads']} threads)  params: {res['params']:,}  "
        f"compile: {res['compile']}  late QAT: {res.get('qat', 'none')}",
        f"batch: {res['tokens_per_step']:,} tokens/step = {res['grad_accum']} micro-steps x "
        f"{res['micro_batch_seqs']} x {res['seq_len']}",
        f"steps: {res['steps']} timed after {res['warmup_steps']} warm-up ({res['warmup_s']:.1f} s)"
        + (f"  first step {res['first_step_s']:.1f} s" if "first_step_s" in res else "")
        + (f" (compile ~{compile_s:.1f} s)" if compile_s is not None else ""),
        f"ms/step: median {res['median_ms']:.1f}  mean {res['mean_ms']:.1f}  min {res['min_ms']:.1f}  "
        f"max {res['max_ms']:.1f}",
        f"tokens/s: {res['tokens_per_s']:,.0f}" + (f"  per GPU: {res['tokens_per_s_per_gpu']:,.0f}  "
                                                  f"({res['ratio_to_ref']:.3f} x reference 1.18M)" if gpu else
                                                  "  per GPU: n/a (cpu)"),
        f"model FLOPs/token: {res['flops_per_token'] / 1e6:.1f} M  achieved: {res['achieved_tflops']:.4f} TFLOP/s"
        + (f"  MFU: {100 * mfu:.1f}% of {res['peak_bf16_tflops']:.0f} ({res['peak_source']})" if mfu is not None
           else "  MFU: n/a" + (f" ({res['peak_source']})" if res.get("peak_source") else "")),
        f"peak memory: {res['peak_mem_bytes'] / 2**30:.2f} GiB ({res['peak_mem_kind']})",
        f"loss: {res['loss_first']:.4f} -> {res['loss_last']:.4f}",
    ]
    if "precision" in res:
        lines.insert(1, "precision: " + " ".join(f"{k}={v}" for k, v in res["precision"].items()))
    return "\n".join(lines)


def format_throughput(res: dict[str, Any]) -> str:
    """One run's report, or for --precision both each one's, a row per dtype and their ratio."""
    if "bf16_over_fp32" not in res:
        return _format_one_throughput(res)
    rows = [_format_one_throughput(res["bf16"]), "", _format_one_throughput(res["fp32"]), ""]
    for name in ("bf16", "fp32"):
        r = res[name]
        rows.append(f"{name}: median {r['median_ms']:.1f} ms/step  {r['tokens_per_s']:,.0f} tokens/s  "
                    f"({' '.join(f'{k}={v}' for k, v in r['precision'].items())})")
    rows.append(f"bf16 / fp32 step time: {res['bf16_over_fp32']:.2f}x (median of adjacent steps' ratios "
                f"{res['paired_ratio_median']:.2f}x; steps alternate, so both see the same load)")
    return "\n".join(rows)


# ---------------------------------------------------------------- artifact budget

def _matrix(rows: int, cols: int, sigma: float, g: torch.Generator) -> torch.Tensor:
    """A trained-looking matrix: 0.5 x orthogonal + sqrt(0.75) x Student-t(df=4) tails, with a
    lognormal per-row gain, rescaled to std sigma (the quant helper's recipe)."""
    q = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=g))[0]
    q = (q if rows >= cols else q.T)[:rows, :cols] * math.sqrt(max(rows, cols))
    # StudentT samples from the global RNG: seeded by the caller.
    t = torch.distributions.StudentT(4.0).sample((rows, cols)) / math.sqrt(2.0)
    w = (0.5 * q + math.sqrt(0.75) * t) * torch.exp(0.25 * torch.randn(rows, 1, generator=g))
    return w / w.std() * sigma


@torch.no_grad()
def bench_fill_weights(model: GPT, sigma: float = 0.3, emb_std: float = 0.05, seed: int = 0) -> None:
    """Overwrite every weight with random-but-realistic values (see docs/benchmarks.md)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    matrices = {id(p) for p in model.matrix_params()}
    tables = {id(p) for p in model.embedding_params()}
    for p in model.parameters():
        if id(p) in tables:
            p.copy_(torch.randn(p.shape, generator=g) * emb_std)
        elif id(p) in matrices and p.dim() == 3:
            for k in range(p.shape[0]):
                p[k].copy_(_matrix(p.shape[1], p.shape[2], sigma, g))
        elif id(p) in matrices or (p.dim() == 2 and min(p.shape) >= 8):
            p.copy_(_matrix(p.shape[0], p.shape[1], sigma, g))
        else:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def bench_synthetic_hessians(cfg: Config, flat: dict, seed: int, seqs: int = 4, seq_len: int = 256) -> dict:
    """GPTQ Hessians of filled weights on uniform random tokens: the bytes GPTQ produces, not its
    quality (that needs trained weights and real calibration: `pgolf bench quant`)."""
    model = per_layer_model(cfg, flat, torch.device("cpu"))
    toks = torch.randint(0, cfg.model.vocab_size, (seqs, seq_len), generator=torch.Generator().manual_seed(seed))
    return collect_hessians(model, toks, seqs, "cpu", with_head=cfg.quant.gptq_embed)


def bench_artifact(cfg: Config, preset: str, sigma: float = 0.3, emb_std: float = 0.05,
                   seed: int = 0) -> dict[str, Any]:
    """Bytes of cfg's artifact for filled weights via the real export path, plus code bytes."""
    phases: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        phases[name] = round(now - t, 3)
        t = now

    model = GPT(cfg.model)
    bench_fill_weights(model, sigma, emb_std, seed)
    lap("build_fill_s")
    flat = unbank_state_dict({k: v.detach() for k, v in model.state_dict().items()}, model.num_layers)
    lap("unbank_s")
    hessians = None
    if cfg.quant.matrix_method == "gptq":
        hessians = bench_synthetic_hessians(cfg, flat, seed)
        lap("calibrate_s")
    meta = {"config_toml": shippable_config_toml(cfg)}  # as export_artifact writes it
    blob, stats = build_artifact(flat, cfg.quant, config_hash(cfg), meta=meta, hessians=hessians)
    lap("quantize_compress_s")
    unpack_artifact(blob)
    lap("unpack_verify_s")
    code = {form: len(bundle_for_config(cfg, preset, minify=form == "minified").encode("utf-8"))
            for form in ("plain", "minified")}
    lap("bundle_s")
    return _artifact_report(cfg, preset, model, flat, blob, stats, code, phases, sigma, emb_std)


def _artifact_report(cfg, preset, model, flat, blob, stats, code, phases, sigma, emb_std) -> dict[str, Any]:
    q = cfg.quant
    counted = code[q.code_form] if q.code_form in code else code["plain"]
    rep = budget_report(len(blob), counted, q.max_artifact_bytes)
    mini = budget_report(len(blob), code["minified"], q.max_artifact_bytes)
    cats = stats.get("categories", {})
    return {
        "preset": preset, "params": count_params(model), "tensors": len(flat), "sigma": sigma,
        "emb_std": emb_std, "quant": f"int{q.matrix_bits} {q.matrix_method}/{q.clip_search}/{q.clip_rule}, "
                                     f"embed int{q.embed_bits}, {q.compressor}-{q.level}"
                                     + (f", lqer r{q.lqer_rank} top{q.lqer_top_k}" if q.lqer_rank else ""),
        "model_bytes": rep["model_bytes"], "code_form": q.code_form, "code_bytes": rep["code_bytes"],
        "total_bytes": rep["artifact_bytes"], "limit": rep["limit"], "margin": rep["margin"], "ok": rep["ok"],
        "code_bytes_plain": code["plain"], "code_bytes_minified": code["minified"],
        "total_bytes_minified": mini["artifact_bytes"], "margin_minified": mini["margin"],
        "body_bytes": stats.get("body_bytes"),
        "matrix_mse": (cats.get("matrix") or {}).get("mse"), "phases_s": phases,
        "total_s": round(sum(phases.values()), 3),
    }


def format_artifact(res: dict[str, Any]) -> str:
    ph = "  ".join(f"{k[:-2]} {v:.1f}s" for k, v in res["phases_s"].items())
    return "\n".join([
        f"preset: {res['preset']}  params: {res['params']:,}  tensors: {res['tensors']}  "
        f"sigma: {res['sigma']}  emb_std: {res['emb_std']}",
        f"quant: {res['quant']}",
        f"model bytes: {res['model_bytes']:,}",
        f"code bytes:  {res['code_bytes']:,} ({res['code_form']}; plain {res['code_bytes_plain']:,}, "
        f"minified {res['code_bytes_minified']:,})",
        f"total:       {res['total_bytes']:,}  margin to {res['limit']:,}: {res['margin']:,}"
        f"{'' if res['ok'] else '  OVER BUDGET'}",
        f"with minified code: {res['total_bytes_minified']:,}  margin: {res['margin_minified']:,}",
        f"phases: {ph}  (total {res['total_s']:.1f} s)",
    ])


# ---------------------------------------------------------------- quantization policies
