"""Side by side with record #1855's script: forward logits, Newton-Schulz, one Muon step and the
lr / loop schedule, on the same inputs on CPU.

    PYTHONPATH=src python3 bench/sidebyside/optim.py --record-script PATH/train_gpt.py [--log PATH/train_seed42.log]

Rows (quantity, record, pgolf, diff, target, ok):
  (a) logits of the same weights: the record's GPT at a reduced width (128 wide, 11 blocks,
      vocab 512, 64 tokens), its state dict loaded into pgolf's record_1855 model at the same
      width, both fp32, loop on and off; RoPE with fp32 frequencies (the record built in fp32)
      and with bf16 frequencies (the record as it ran: its cast to bf16 reaches that buffer).
  (a') the record's model cast to bf16 as it trains (bf16 embedding and stream) beside pgolf's.
  (b) one Newton-Schulz call on the same bank (fed fp32 and bf16): max relative difference.
  (c) two Muon steps on the same banks and grads: relative difference of the update.
  (d) lr multiplier and loop state at every step line of the record's log, and on a synthetic
      profile at its mean step time.
"""

import argparse
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_import import _sdpa_causal, import_record  # noqa: E402

from pgolf.config import resolve_config  # noqa: E402
from pgolf.model import attention  # noqa: E402
from pgolf.model.gpt import GPT  # noqa: E402
from pgolf.optim.muon import Muon, newton_schulz  # noqa: E402
from pgolf.train import RunState, set_looping, set_schedule  # noqa: E402

DIM, HEADS, KV, VOCAB, SEQ = 128, 4, 2, 512, 64
# The record's run command (its log's Hyperparameters block) for the values this file reads.
RUN_COMMAND = dict(WARMDOWN_FRAC="0.85", MIN_LR="0.1", GPTQ_RESERVE_SECONDS="0.5", MUON_BACKEND_STEPS="5",
                   MATRIX_LR="0.026", SPARSE_ATTN_GATE_ENABLED="1", SPARSE_ATTN_GATE_SCALE="0.5",
                   SMEAR_GATE_ENABLED="1", GATE_WINDOW="12")
TOKENS_PER_STEP = 786432


def row(quantity, record, pgolf, diff, target, ok):
    fmt = lambda v: v if isinstance(v, str) else float(f"{v:.6g}")  # noqa: E731
    return dict(quantity=quantity, record=fmt(record), pgolf=fmt(pgolf), diff=fmt(diff), target=target, ok=bool(ok))


def record_h(mod):
    h = mod.Hyperparameters()
    for k, v in dict(model_dim=DIM, num_heads=HEADS, num_kv_heads=KV, vocab_size=VOCAB, rope_dims=16,
                     num_layers=11, num_loops=2, loop_start=3, loop_end=5, parallel_start_layer=8,
                     sparse_attn_gate_enabled=True, sparse_attn_gate_scale=0.5, smear_gate_enabled=True,
                     gate_window=12, skip_gates_enabled=True, xsa_last_n=11, rope_yarn=False,
                     warmdown_frac=0.85, min_lr=0.1, gptq_reserve_seconds=0.5, max_wallclock_seconds=600.0,
                     enable_looping_at=0.35, iterations=20000).items():
        setattr(h, k, v)
    return h


def pgolf_cfg(*sets):
    return resolve_config("record_1855", env={}, sets=[
        f"model.vocab_size={VOCAB}", f"model.model_dim={DIM}", f"model.num_heads={HEADS}",
        f"model.num_kv_heads={KV}", "model.compile=false", "model.embed_dtype=fp32", "model.stream_dtype=fp32",
        *sets])[0]


# ---------------------------------------------------------------- (a) logits

def logits_rows(mod):
    mod.BOS_ID = 1
    torch.manual_seed(0)
    ref = mod.GPT(record_h(mod)).float().eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    plain = torch.randint(2, VOCAB, (1, SEQ), generator=g)
    docs = plain.clone()
    docs[0, 0] = docs[0, 23] = docs[0, 50] = 1
    cu = torch.tensor([0, 23, 50, SEQ], dtype=torch.int32)
    out = []
    for rope in ("fp32", "bf16_freq", "fp64"):
        for blk in ref.blocks:
            inv = blk.attn.rotary.inv_freq.float()
            # The record's cast of its model to bf16 rounds this buffer (restore_fp32_params skips it).
            blk.attn.rotary.inv_freq = inv.to(torch.bfloat16).float() if rope == "bf16_freq" else _fp32_inv(blk)
            blk.attn.rotary._cos_cached = None
        want_rope = "fp32" if rope == "fp64" else rope
        ours = GPT(pgolf_cfg(f"model.rope_precision={rope}").model).eval()
        missing = set(sd) ^ set(ours.state_dict())
        if missing:
            raise SystemExit(f"tensor names differ: {sorted(missing)[:5]}")
        ours.load_state_dict(sd)
        cases = (("causal", plain, {}, False), ("3 docs, pgolf masked SDPA", docs, dict(cu_seqlens=cu, max_seqlen=SEQ), False),
                 ("3 docs, pgolf's masked SDPA swapped for the stand-in's per-document SDPA", docs,
                  dict(cu_seqlens=cu, max_seqlen=SEQ), True))
        for loop in (False, True):
            for name, ids, kw, swap in cases:
                ref.looping_active = ours.looping_active = loop
                saved = attention.masked_attention
                attention.masked_attention = _per_document_sdpa if swap else saved
                try:
                    with torch.no_grad():
                        a = ref.forward_logits(ids, **kw)
                        b = ours.forward_logits(ids)
                finally:
                    attention.masked_attention = saved
                d = (a - b).abs().max().item()
                label = f"(a) logits max|diff|, record RoPE {want_rope} vs pgolf rope_precision={rope}, loop {'on' if loop else 'off'}, {name}"
                bitwise = torch.equal(a, b)
                exact = rope != "fp64" and (swap or name == "causal")
                target = "bitwise" if exact else "info (fp64 tables)" if rope == "fp64" else "info (attention kernel)"
                out.append(row(label, a.abs().max().item(), b.abs().max().item(), d, target, bitwise or not exact))
                out[-1]["pgolf"] = f"{out[-1]['pgolf']} (bitwise {bitwise})"
    return out


def as_run_rows(mod):
    """The record's model as it trains: cast to bf16, then restore_fp32_params (tok_emb and the RoPE
    frequency buffer stay bf16), run without autocast on CPU; pgolf's record_1855 model (bf16
    table and stream, bf16 frequencies) holding its state dict. The hidden state before the head
    is compared; the logits differ by design (the record soft-caps in bf16, pgolf in fp32)."""
    mod.BOS_ID = 1
    torch.manual_seed(0)
    ref = mod.GPT(record_h(mod))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = ref.bfloat16()
    mod.restore_fp32_params(ref)
    ref.eval()
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    ids = torch.randint(2, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(1))
    out = []
    for stream in ("embed", "fp32"):
        ours = GPT(pgolf_cfg("model.embed_dtype=bf16", f"model.stream_dtype={stream}").model).eval()
        ours.load_state_dict(sd)
        for loop in (False, True):
            ref.looping_active = ours.looping_active = loop
            with torch.no_grad():
                a, b = ref._forward_hidden(ids), ours.forward_hidden(ids)
            d = (a.float() - b.float()).abs().max().item()
            exact = stream == "embed"
            out.append(row(f"(a') hidden max|diff|, record cast to bf16 as it trains vs pgolf stream_dtype={stream} "
                           f"(bf16 table, bf16_freq), loop {'on' if loop else 'off'}, no autocast",
                           str(a.dtype), f"{b.dtype} (bitwise {torch.equal(a, b)})", d,
                           "bitwise" if exact else "info (pgolf's fp32 stream)", torch.equal(a, b) or not exact))
    return out


def _per_document_sdpa(q, k, v, mask, backend):
    """The stand-in's varlen kernel for a batch of one row: causal SDPA inside each document that
    the same-document mask [1,1,T,T] marks (a document starts where t may not see t-1)."""
    m = mask[0, 0]
    t = m.shape[0]
    starts = [i for i in range(t) if i == 0 or not bool(m[i, i - 1])]
    out = torch.zeros_like(q)
    for a, b in zip(starts, starts[1:] + [t]):
        out[:, a:b] = _sdpa_causal(q[:, a:b], k[:, a:b], v[:, a:b])
    return out


def _fp32_inv(blk):
    rd = blk.attn.rotary.rope_dims
    return 1.0 / blk.attn.rotary.base ** (torch.arange(0, rd, 2, dtype=torch.float32) / rd)


# ---------------------------------------------------------------- (b), (c) Newton-Schulz and Muon

def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def ns_rows(mod):
    g = torch.Generator().manual_seed(2)
    out = []
    for shape in ((22, DIM, DIM), (11, 4 * DIM, DIM)):
        G = torch.randn(*shape, generator=g)
        for dt in (torch.float32, torch.bfloat16):
            x = G.to(dt)
            want = mod.zeropower_via_newtonschulz5(x, steps=5)
            now = newton_schulz(x, steps=5, coeffs="polar_express", safety=1.0, norm_fp32=False)
            old = newton_schulz(x, steps=5, coeffs="polar_express")
            tag = f"{list(shape)} fed {str(dt).split('.')[-1]}"
            out.append(row(f"(b) NS rel diff, {tag}, record_1855 switches", 0.0, rel(now, want), rel(now, want),
                           "0 (bitwise)", torch.equal(now, want)))
            out.append(row(f"(b) NS rel diff, {tag}, pgolf defaults (1.02 x fp32 norm)", 0.0, rel(old, want),
                           rel(old, want), "info", True))
    return out


def _muon_run(make, banks, grads):
    ps = [torch.nn.Parameter(b.clone()) for b in banks]
    opt = make(ps)
    for gs in grads:
        for p, gr in zip(ps, gs):
            p.grad = gr.clone()
        opt.step()
    return [p.detach() for p in ps]


def muon_rows(mod):
    g = torch.Generator().manual_seed(3)
    banks = [torch.randn(22, DIM, DIM, generator=g) * 0.05, torch.randn(11, 4 * DIM, DIM, generator=g) * 0.05,
             torch.randn(11, DIM, 4 * DIM, generator=g) * 0.05]
    grads = [[torch.randn_like(b) * 1e-3 for b in banks] for _ in range(2)]
    lr, mom, wd = 0.026, 0.97, 0.095
    ref = _muon_run(lambda ps: mod.Muon(ps, lr=lr, momentum=mom, backend_steps=5, weight_decay=wd,
                                        row_normalize=True), banks, grads)
    kw = dict(lr=lr, momentum=mom, backend_steps=5, weight_decay=wd, coeffs="polar_express", row_norm=True)
    now = _muon_run(lambda ps: Muon(ps, pe_safety=1.0, momentum_dtype=torch.bfloat16, ns_norm_fp32=False,
                                    row_norm_clamp=True, **kw), banks, grads)
    old = _muon_run(lambda ps: Muon(ps, **kw), banks, grads)
    out = []
    for i, name in enumerate(("qo", "mlp_up", "mlp_down")):
        ur, un, uo = ref[i] - banks[i], now[i] - banks[i], old[i] - banks[i]
        out.append(row(f"(c) 2 Muon steps, {name} bank: update rel diff, record_1855 switches", 0.0, rel(un, ur),
                       rel(un, ur), "0 (bitwise params)", torch.equal(now[i], ref[i])))
        out.append(row(f"(c) 2 Muon steps, {name} bank: update rel diff, pgolf defaults", 0.0, rel(uo, ur),
                       rel(uo, ur), "info", True))
    return out


# ---------------------------------------------------------------- (d) schedule

class _Opt:
    def set_lr_multiplier(self, m): self.m = m
    def set_muon_momentum(self, m): pass
    def set_muon_wd_multiplier(self, m): pass


def record_schedule(h, step, elapsed_ms):
    """The record's train_model arithmetic: frac of the capped clock, lr_mul, loop switch."""
    cap = 1e3 * h.max_wallclock_seconds - h.gptq_reserve_seconds * 1e3
    frac = elapsed_ms / max(cap, 1e-9)
    mult = 1.0
    if h.warmdown_frac > 0 and frac >= 1.0 - h.warmdown_frac:
        mult = max((1.0 - frac) / h.warmdown_frac, h.min_lr)
    return mult, frac >= h.enable_looping_at


def pgolf_schedule(cfg, step, elapsed_ms):
    st = RunState()
    st.step = step
    mult = set_schedule(_Opt(), None, cfg, st, elapsed_ms)
    m = SimpleNamespace(looping_active=False)
    set_looping(m, cfg, st, elapsed_ms)
    return mult, m.looping_active


def log_profile(log_path):
    """(step, ms) of each step line: from the rounded train_time and from tok/s (exact to ~1e-7)."""
    rounded, exact = [], []
    for line in Path(log_path).read_text().splitlines():
        m = re.match(r"(\d+)/\d+ train_loss: \S+ train_time: ([\d.]+)m tok/s: (\d+)", line)
        if m:
            step, minutes, tps = int(m[1]), float(m[2]), int(m[3])
            rounded.append((step, minutes * 60_000.0))
            exact.append((step, step * TOKENS_PER_STEP / tps * 1000.0))
        m = re.search(r"stopping_early: wallclock_cap train_time: (\d+)ms step: (\d+)", line)
        if m:
            exact.append((int(m[2]), float(m[1])))
    return rounded, exact


def schedule_rows(mod, log_path):
    h = record_h(mod)
    cfg = resolve_config("record_1855", env={})[0]
    old = resolve_config("record_1855", env={}, sets=[
        "schedule.warmdown_mode=auto", "schedule.warmdown_iters=4190", "schedule.min_lr_form=lerp",
        "quant.gptq_reserve_seconds=16.0"])[0]
    profiles = {}
    if log_path and Path(log_path).is_file():
        profiles["log train_time (0.1 min)"], profiles["log tok/s"] = log_profile(log_path)
    mean_ms = 599_592.0 / 4945   # the log's final train_time over its steps
    profiles["synthetic 121.25 ms/step"] = [(s, s * mean_ms) for s in range(4946)]
    out = []
    for name, prof in profiles.items():
        ref = [record_schedule(h, s, t) for s, t in prof]
        ours = [pgolf_schedule(cfg, s, t) for s, t in prof]
        before = [pgolf_schedule(old, s, t) for s, t in prof]
        dm = max(abs(a[0] - b[0]) for a, b in zip(ref, ours))
        loops = sum(a[1] != b[1] for a, b in zip(ref, ours))
        mean = lambda xs: sum(x[0] for x in xs) / len(xs)  # noqa: E731
        out.append(row(f"(d) lr multiplier max|diff| over {len(prof)} points, {name}", mean(ref), mean(ours), dm,
                       "0", dm == 0.0))
        out[-1]["record"], out[-1]["pgolf"] = f"mean {out[-1]['record']}", f"mean {out[-1]['pgolf']}"
        out.append(row(f"(d) loop state mismatches, {name}", sum(a[1] for a in ref), sum(b[1] for b in ours),
                       loops, "0", loops == 0))
        out.append(row(f"(d) mean lr multiplier, {name}, pgolf before (auto 4190 steps, lerp, 16 s)", mean(ref),
                       mean(before), mean(before) - mean(ref), "info", True))
    cap = 599_500.0
    start = _first(lambda t: record_schedule(h, 0, t)[0] < 1.0, cap) / 1000
    start_p = _first(lambda t: pgolf_schedule(cfg, 0, t)[0] < 1.0, cap) / 1000
    floor = _first(lambda t: record_schedule(h, 0, t)[0] <= h.min_lr, cap) / 1000
    floor_p = _first(lambda t: pgolf_schedule(cfg, 0, t)[0] <= 0.1, cap) / 1000
    out.append(row("(d) warmdown start (s)", start, start_p, start_p - start, "0", abs(start_p - start) < 1e-5))
    out.append(row("(d) floor reached (s)", floor, floor_p, floor_p - floor, "0", abs(floor_p - floor) < 1e-5))
    return out


def _first(pred, hi):
    lo = 0.0
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if pred(mid) else (mid, hi)
    return hi


def rows(record_module, log_path: str | None = None) -> list[dict]:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return logits_rows(record_module) + as_run_rows(record_module) + ns_rows(record_module) + muon_rows(record_module) + \
        schedule_rows(record_module, log_path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record-script", required=True)
    ap.add_argument("--log", default=None, help="the record's train_seed42.log (default: beside the script)")
    a = ap.parse_args()
    log = a.log or str(Path(a.record_script).with_name("train_seed42.log"))
    mod = import_record(a.record_script, env=RUN_COMMAND)
    for r in rows(mod, log):
        print(f"{'ok ' if r['ok'] else 'BAD'} {r['quantity']}: record={r['record']} pgolf={r['pgolf']} "
              f"diff={r['diff']} target={r['target']}")


if __name__ == "__main__":
    main()
