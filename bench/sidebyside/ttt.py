"""Record #1855's batched LoRA TTT and phased TTT beside pgolf's eval.ttt_lora_method=record.

    python bench/sidebyside/ttt.py --record-script PATH/train_gpt.py

A tiny record-architecture model (6 blocks of width 64, blocks 1-2 looped three times, parallel
lanes from block 4, fp32, token ids folded into a vocabulary of 1024) is built by the record's
own GPT class; its weights, perturbed so every block acts, are loaded into pgolf's GPT. Both
score the same 12 documents cut from the CaseOps validation shard, with the shard's byte
sidecar, in batches of 3 documents and 48-token chunks. The adapters' A come from the torch
generator seeded alike on both sides (the record draws from the global one). Rows: the no-TTT
bpb (the same windows with a zero learning rate), LoRA TTT, phased TTT (a prefix of 7 documents
in 3 phases, boundaries 2/4/7 inside the 3-document batches), each record beside pgolf, and the
gains of pgolf's per-document method (record_1855's eval fields, per_doc) for comparison.
"""

import argparse
import dataclasses
import math
import sys
import types
import uuid
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "src"))

from pgolf.config import resolve_config  # noqa: E402
from pgolf.data.shards import load_shard  # noqa: E402
from pgolf.data.sidecar import SidecarBytes, load_sidecar  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.batched_lora import BATCHED_LORA_SEED, eval_record_ttt  # noqa: E402
from pgolf.eval.lora_ttt import eval_lora_ttt  # noqa: E402
from pgolf.eval.phased_ttt import eval_phased_ttt  # noqa: E402
from pgolf.model.gpt import GPT  # noqa: E402

DATA = HERE.parents[1] / ".." / "shared" / "data" / "datasets" / "fineweb_legal_sp8192_caseops"
VAL = "fineweb_val_000000.bin"
N_DOCS, MAX_DOC, VOCAB = 12, 200, 1024
ARCH = dict(num_layers=6, model_dim=64, num_heads=4, num_kv_heads=2, loop_start=1, loop_end=2, num_loops=2,
            xsa_last_n=6)
TTT = dict(rank=80, batch=3, chunk=48, seq=128, lora_lr=1e-4, wd=0.5, beta2=0.99, global_lr=0.01,
           global_chunk=512, global_seqs=2, prefix=7, phases=3)
TARGET = 1e-4


def _documents() -> tuple[torch.Tensor, torch.Tensor]:
    """The first N_DOCS documents of the shard, each cut to a length between 60 and MAX_DOC
    tokens, concatenated (each one's last target is the next one's BOS; the last runs to the
    end); the bytes of each position from the sidecar."""
    path = str((DATA / VAL).resolve())
    toks = torch.from_numpy(np.asarray(load_shard(path)[:400_000], dtype=np.int64))
    nbytes = torch.from_numpy(load_sidecar(path)[:400_000])
    bos = torch.nonzero(toks == 1).flatten().tolist()
    keep_t, keep_b = [], []
    for i, (a, b) in enumerate(zip(bos[:N_DOCS], bos[1:N_DOCS + 1])):
        n = min(b - a, 60 + (i * 97) % (MAX_DOC - 60))
        keep_t.append(toks[a:a + n])
        keep_b.append(nbytes[a:a + n])
    toks = torch.cat(keep_t)
    # Folded into a small vocabulary (ids >= VOCAB land in 2..VOCAB-1, never on BOS or 0).
    toks = torch.where(toks < VOCAB, toks, 2 + toks % (VOCAB - 2))
    return toks, torch.cat(keep_b)


def _models(rec):
    h = rec.Hyperparameters()
    for k, v in ARCH.items():
        setattr(h, k, v)
    h.parallel_start_layer, h.fused_ce_enabled, h.vocab_size = 4, False, VOCAB
    h.sparse_attn_gate_enabled, h.sparse_attn_gate_scale, h.gate_window = True, 0.5, 12
    h.smear_gate_enabled, h.caseops_enabled = True, True
    rec.BOS_ID = 1
    torch.manual_seed(0)
    rm = rec.GPT(h).float()
    with torch.no_grad():
        for p in rm.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    rm.looping_active = True
    sets = [f"model.{k}={v}" for k, v in ARCH.items()] + ["model.parallel_start=4", f"model.vocab_size={VOCAB}"]
    # The record's GPT here is an fp32 module (never cast to bf16), so its RoPE tables are fp32
    # angles of fp32 frequencies: record_1855's as-trained bf16 numerics are compared in optim.py.
    sets += ["model.rope_precision=fp32", "model.embed_dtype=fp32", "model.stream_dtype=fp32"]
    cfg, _ = resolve_config("record_1855", env={}, sets=sets)
    pm = GPT(cfg.model)
    pm.load_state_dict({k: v for k, v in rm.state_dict().items()}, strict=True)
    pm.looping_active = True
    return h, rm, pm, cfg


def _record_bpb(rec, h, rm, toks, nbytes, lr: float, prefix: int) -> float:
    h.ttt_lora_rank, h.ttt_batch_size, h.ttt_chunk_size = TTT["rank"], TTT["batch"], TTT["chunk"]
    h.ttt_eval_seq_len = h.eval_seq_len = TTT["seq"]
    h.ttt_lora_lr, h.ttt_weight_decay, h.ttt_beta1, h.ttt_beta2 = lr, TTT["wd"], 0.0, TTT["beta2"]
    h.ttt_grad_steps, h.ttt_k_lora, h.ttt_mlp_lora, h.ttt_o_lora, h.ttt_optimizer = 1, True, True, True, "adam"
    h.phased_ttt_prefix_docs, h.phased_ttt_num_phases = prefix, TTT["phases"]
    h.global_ttt_lr, h.global_ttt_momentum, h.global_ttt_epochs = TTT["global_lr"], 0.9, 1
    h.global_ttt_chunk_tokens, h.global_ttt_batch_seqs = TTT["global_chunk"], TTT["global_seqs"]
    h.global_ttt_warmup_chunks, h.global_ttt_grad_clip, h.global_ttt_respect_doc_boundaries = 0, 1.0, True
    h.val_doc_fraction, h.ttt_eval_batches, h.run_id = 1.0, "", f"sbs-{uuid.uuid4().hex[:8]}"
    h.rank, h.world_size = 0, 1
    val = types.SimpleNamespace(val_tokens=toks, val_bytes=nbytes, caseops_enabled=True, base_bytes_lut=None,
                                has_leading_space_lut=None, is_boundary_token_lut=None)
    model = type(rm)(h).float()
    model.load_state_dict(rm.state_dict())
    model.looping_active = True
    for blk in model.blocks:  # its Triton MLP (training mode only) computes the same function
        blk.mlp.use_fused = False
    torch.manual_seed(BATCHED_LORA_SEED)
    _, bpb = rec.eval_val_ttt_phased(h, model, torch.device("cpu"), val, model.forward_ttt)
    return bpb


def _pgolf_bpb(pm, cfg, toks, nbytes, lr: float, kind: str, method: str = "record") -> float:
    e = dataclasses.replace(cfg.eval, seq_len=TTT["seq"], ttt_lora_eval_seq_len=TTT["seq"], ttt_kind=kind,
                            ttt_lora_method=method, ttt_lora_rank=TTT["rank"], ttt_lora_batch=TTT["batch"],
                            ttt_lora_chunk=TTT["chunk"], ttt_lora_lr=lr, ttt_lora_wd=TTT["wd"],
                            ttt_lora_beta2=TTT["beta2"], ttt_phased_prefix_docs=TTT["prefix"],
                            ttt_phased_phases=TTT["phases"], ttt_lr=TTT["global_lr"],
                            ttt_chunk_tokens=TTT["global_chunk"], ttt_batch_seqs=TTT["global_seqs"])
    tables = SidecarBytes(nbytes, VOCAB)
    run = eval_record_ttt if method == "record" else (eval_lora_ttt if kind == "lora" else eval_phased_ttt)
    return run(pm, toks, e, tables, Comm(), torch.device("cpu"))["val_bpb"]


def _row(q: str, r: float, p: float, target: float | None = TARGET) -> dict:
    d = p - r if r is not None else float("nan")
    ok = "info" if target is None else bool(abs(d) <= target)
    return dict(quantity=q, record=r, pgolf=p, diff=d, target=target if target is not None else "", ok=ok)


def rows(record_module) -> list[dict]:
    if not (DATA / VAL).exists():
        return [dict(quantity="ttt: data missing", record="", pgolf="", diff="", target="", ok=False)]
    rec = record_module
    torch.set_num_threads(2)
    toks, nbytes = _documents()
    h, rm, pm, cfg = _models(rec)
    out = []
    r0, p0 = _record_bpb(rec, h, rm, toks, nbytes, 0.0, 0), _pgolf_bpb(pm, cfg, toks, nbytes, 0.0, "lora")
    out.append(_row("no-TTT bpb (lr 0, same windows)", r0, p0))
    r1, p1 = (_record_bpb(rec, h, rm, toks, nbytes, TTT["lora_lr"], 0),
              _pgolf_bpb(pm, cfg, toks, nbytes, TTT["lora_lr"], "lora"))
    out.append(_row("LoRA TTT bpb", r1, p1))
    r2, p2 = (_record_bpb(rec, h, rm, toks, nbytes, TTT["lora_lr"], TTT["prefix"]),
              _pgolf_bpb(pm, cfg, toks, nbytes, TTT["lora_lr"], "phased"))
    out.append(_row("phased TTT bpb", r2, p2))
    out.append(_row("LoRA TTT gain (no-TTT - LoRA)", r0 - r1, p0 - p1))
    out.append(_row("phased TTT gain (no-TTT - phased)", r0 - r2, p0 - p2))
    for kind in ("lora", "phased"):
        pd = _pgolf_bpb(pm, cfg, toks, nbytes, TTT["lora_lr"], kind, "per_doc")
        out.append(_row(f"{kind} TTT gain, pgolf per_doc method (record: its own method)",
                        r0 - (r1 if kind == "lora" else r2), p0 - pd, None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record-script", required=True)
    args = ap.parse_args()
    from record_import import import_record
    rec = import_record(args.record_script)
    for r in rows(rec):
        print(" | ".join(f"{v:.6g}" if isinstance(v, float) and not math.isnan(v) else str(v) for v in r.values()))


if __name__ == "__main__":
    main()
