"""Per-document LoRA test-time training: score first, adapt, reset at every document start.

Lineage: document-based LoRA TTT (#1530) -> phased TTT (#1610, #1626) -> #1855 (rank 80 on
Q/K/V/O/MLP + head, Adam lr 1e-4 with betas (0, 0.99), weight decay 0.5, 48-token chunks).
The stream is cut into documents at BOS (model.cfg.bos_id). A document's targets are cut into
chunks of eval.ttt_lora_chunk; each chunk is scored through a window of at most seq_len tokens
of its own document, THEN (unless it is the document's last chunk) Adam steps on that chunk's
mean NLL train the adapters. Every document starts from the same adapters (B = 0, A = one fixed
draw, fresh optimizer state), so its scores depend on its own tokens only.

This is eval.ttt_lora_method = per_doc; `record` runs #1855's own batched form instead
(eval/batched_lora.py). Where per_doc differs from the records, and why:
- the adapters are real LoRA deltas W + s*B@A of the block matrices, applied from outside
  through GPT.weight_transform (the model never imports eval); the records' "o" and "mlp"
  adapters are low-rank side paths from the block input instead;
- one document at a time (the records batch 64 documents with an adapter each): per-sample
  weights need a per-sample seam in the model; the scores are the same, only slower on GPUs;
- A restarts from one fixed draw for every document (the records redraw it per batch), so a
  score never depends on which documents came before.
"""

import copy
import math
import time
from typing import Any, Callable

import torch

from pgolf.config_checks import LORA_TARGET_NAMES
from pgolf.dist import Comm
from pgolf.eval.bpb import (BpbAccumulator, ByteTables, EvalInputError, EvalProgress, ScoreRecorder, as_byte_tables,
                            eval_emit_event, eval_rank_span, target_bytes, val_tokens_tensor)
from pgolf.hw import at_least_fp32, compute_autocast

# Roles of the rows of each bank, in units of num_layers (see model/banks.py BANK_LAYOUT).
LORA_BANK_ROLES = {"qo_bank": ("q", "o"), "kv_bank": ("k", "v"), "mlp_up_bank": ("up",),
                   "mlp_down_bank": ("down",)}
# Order of one layer's matrices in GPT.matrix_params() when the model is not banked.
LORA_LAYER_ROLES = ("q", "k", "v", "o", "up", "down")


def split_documents(tokens: torch.Tensor, bos_id: int) -> list[tuple[int, int]]:
    """[lo, hi) target ranges of the documents: one runs from its BOS to the next BOS (its last
    target predicts that BOS); targets before the first BOS form one leading document."""
    n = tokens.numel() - 1
    starts = torch.nonzero(tokens[:n].cpu() == bos_id).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    bounds = starts + [n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def doc_chunk_windows(lo: int, hi: int, chunk: int, seq_len: int) -> list[tuple[int, int, int]]:
    """(start, score_lo, score_hi) per chunk of document targets [lo, hi); the window feeds
    tokens [start, score_hi). start comes from the chunk's nominal end, not from the document's
    end, so a later BOS never changes the context of an earlier target (causality)."""
    chunk = max(1, min(chunk, seq_len))
    return [(max(lo, a + chunk - seq_len), a, min(a + chunk, hi)) for a in range(lo, hi, chunk)]


def parse_lora_targets(spec: str) -> list[str]:
    names = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in names if p not in LORA_TARGET_NAMES]
    if bad:
        raise EvalInputError(f"eval.ttt_lora_targets: {', '.join(bad)} unknown; use a comma list of "
                             f"{', '.join(LORA_TARGET_NAMES)}")
    return names


def lora_weight_slots(model: torch.nn.Module, targets: list[str]) -> list[tuple]:
    """(key, weight, rows, matrices) for every tensor the adapters touch: rows index a bank
    (None = a 2-D weight), matrices name each adapted matrix as (role, layer)."""
    out: list = []
    if getattr(model, "banked", False):
        L = model.num_layers
        for bank, roles in LORA_BANK_ROLES.items():
            w = getattr(model, bank)
            mats = [(r, roles[min(r // L, len(roles) - 1)], r % L) for r in range(w.shape[0])]
            mats = [m for m in mats if m[1] in targets]
            if mats:
                out.append((bank, w, [r for r, _, _ in mats], [(role, i) for _, role, i in mats]))
    else:
        n = len(LORA_LAYER_ROLES)
        for i, w in enumerate(model.matrix_params()):
            role = LORA_LAYER_ROLES[i % n]
            if role in targets:
                out.append((f"layer{i // n}.{role}", w, None, [(role, i // n)]))
    if "head" in targets:
        head = getattr(model, "lm_head", None)
        out.append(("head", model.tok_emb.weight if head is None else head.weight, None, [("head", 0)]))
    return out


def lora_initial_a(role: str, layer: int, rank: int, in_f: int, seed: int) -> torch.Tensor:
    """Kaiming-uniform A of one matrix, drawn from its own (role, layer) stream so banked and
    per-layer models start from the same adapters."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + layer * len(LORA_TARGET_NAMES)
                                      + LORA_TARGET_NAMES.index(role))
    bound = 1.0 / math.sqrt(in_f)
    return (torch.rand(rank, in_f, generator=g) * 2 - 1) * bound


class DocLora:
    """Low-rank deltas on chosen matrices, installed as the model's weight_transform.

    Deliberately not an nn.Module: assigned to GPT.weight_transform it would register its
    tensors as the model's own parameters (phased TTT's global SGD must not train them).
    """

    def __init__(self, model: torch.nn.Module, targets: list[str], rank: int, alpha: float,
                 seed: int = 0) -> None:
        self.inner = getattr(model, "weight_transform", None)
        self.rank = rank
        # alpha/rank keeps the update size independent of the rank (#1767, #1855: 144/80); 0 = plain B@A.
        self.scale = alpha / rank if alpha > 0 and rank > 0 else 1.0
        self.slots: dict[int, tuple[str, torch.Tensor | None]] = {}
        self.A: dict[str, torch.Tensor] = {}
        self.B: dict[str, torch.Tensor] = {}
        self.A0: dict[str, torch.Tensor] = {}
        self.wants_head = "head" in targets and rank > 0
        self.head_seen = False
        if rank <= 0:
            return
        if not hasattr(model, "weight_transform"):
            raise EvalInputError("LoRA TTT needs a model with the weight_transform seam (pgolf GPT); "
                                 "set eval.ttt_lora_rank 0 or use eval.ttt_kind global")
        for key, w, rows, mats in lora_weight_slots(model, targets):
            n = len(mats)
            out_f, in_f = w.shape[-2:]
            # Random A and zero B: the delta starts at exactly 0 (the records' init).
            self.A0[key] = torch.stack([lora_initial_a(r, i, rank, in_f, seed) for r, i in mats]).to(w.device)
            self.A[key] = self.A0[key].clone().requires_grad_(True)
            self.B[key] = torch.zeros(n, out_f, rank, device=w.device, requires_grad=True)
            idx = None if rows is None else torch.tensor(rows, device=w.device)
            self.slots[id(w)] = (key, idx)

    @property
    def active(self) -> bool:
        return bool(self.slots)

    def params(self) -> list[torch.Tensor]:
        return list(self.A.values()) + list(self.B.values())

    @torch.no_grad()
    def reset(self) -> None:
        for key, a0 in self.A0.items():
            self.A[key].copy_(a0)
            self.B[key].zero_()

    def optimizer(self, ecfg: Any) -> torch.optim.Optimizer:
        # eps 1e-10 as the records: B starts at 0 and its first moments are tiny.
        return torch.optim.AdamW(self.params(), lr=ecfg.ttt_lora_lr, eps=1e-10,
                                 betas=(ecfg.ttt_lora_beta1, ecfg.ttt_lora_beta2),
                                 weight_decay=ecfg.ttt_lora_wd)

    def __call__(self, group: str, w: torch.Tensor) -> torch.Tensor:
        slot = self.slots.get(id(w))
        out = w if self.inner is None else self.inner(group, w)
        if slot is None:
            return out
        key, rows = slot
        self.head_seen = self.head_seen or key == "head"
        delta = torch.bmm(self.B[key], self.A[key]) * self.scale
        if rows is None:
            return out + delta[0].to(out.dtype)
        return out.index_add(0, rows, delta.to(out.dtype))


def doc_bos_id(model: torch.nn.Module, bos_id: int | None) -> int:
    """The BOS id that cuts documents: the argument, else the model config's bos_id."""
    if bos_id is not None:
        return bos_id
    cfg_bos = getattr(getattr(model, "cfg", None), "bos_id", None)
    if cfg_bos is None:
        raise EvalInputError("per-document TTT needs a BOS id: pass bos_id or use a model whose cfg "
                             "has bos_id (model.bos_id)")
    return int(cfg_bos)


def lora_work_model(model: torch.nn.Module, ecfg: Any) -> tuple[torch.nn.Module, DocLora]:
    """A frozen deep copy of model (the caller's model is never touched) with adapters installed."""
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.requires_grad_(False)
    targets = parse_lora_targets(ecfg.ttt_lora_targets)
    lora = DocLora(work, targets, ecfg.ttt_lora_rank, ecfg.ttt_lora_alpha)
    if lora.active:
        work.weight_transform = lora
    return work, lora


def _doc_forward(work: torch.nn.Module, tokens: torch.Tensor, win: tuple, device: torch.device,
                 grad: bool) -> torch.Tensor:
    start, lo, hi = win
    x = tokens[start:hi].to(device)[None]
    y = tokens[start + 1:hi + 1].to(device)[None]
    with (torch.enable_grad() if grad else torch.no_grad()), compute_autocast(device):
        return at_least_fp32(work.token_nll(x, y)[0, lo - start:])


def adapt_document(work: torch.nn.Module, lora: DocLora, tokens: torch.Tensor, doc: tuple,
                   ecfg: Any, tables: ByteTables, acc: BpbAccumulator, device: torch.device,
                   recorder: ScoreRecorder | None = None, events: Any = None) -> int:
    """Score one document chunk by chunk, adapting between chunks; returns the chunks scored."""
    windows = doc_chunk_windows(doc[0], doc[1], ecfg.ttt_lora_chunk, ecfg.seq_len)
    lora.reset()
    opt = lora.optimizer(ecfg) if lora.active else None
    for k, (start, lo, hi) in enumerate(windows):
        train = opt is not None and k < len(windows) - 1
        nll = _doc_forward(work, tokens, (start, lo, hi), device, train)
        if lora.wants_head and not lora.head_seen:
            raise EvalInputError("eval.ttt_lora_targets has head, but this model does not pass its "
                                 "head weight through weight_transform; drop head from the targets")
        prev, tgt = tokens[lo:hi].to(device), tokens[lo + 1:hi + 1].to(device)
        acc.add(nll.detach(), prev, tgt, tables, nbytes=target_bytes(tables, lo, hi, prev, tgt))
        if recorder is not None:
            recorder.add(lo, nll.detach())
        eval_emit_event(events, "score", lo, hi)
        for step in range(ecfg.ttt_lora_steps if train else 0):
            if step:
                nll = _doc_forward(work, tokens, (start, lo, hi), device, True)
            opt.zero_grad(set_to_none=True)
            nll.mean().backward()
            opt.step()
            # The window's inputs start at `start`: report them all as read by training.
            eval_emit_event(events, "train", start, hi)
    return len(windows)


def adapt_documents(work: torch.nn.Module, lora: DocLora, tokens: torch.Tensor, docs: list,
                    ecfg: Any, tables: ByteTables, acc: BpbAccumulator, device: torch.device,
                    recorder: ScoreRecorder | None = None, events: Any = None,
                    progress: EvalProgress | None = None, done: int = 0) -> int:
    """adapt_document over docs in stream order; returns the chunks scored."""
    chunks = 0
    for i, doc in enumerate(docs, start=1):
        chunks += adapt_document(work, lora, tokens, doc, ecfg, tables, acc, device, recorder, events)
        if progress is not None:
            progress.step(done + i, acc)
    return chunks


def eval_lora_ttt(model: torch.nn.Module, val_tokens: Any, ecfg: Any, tables: Any, comm: Comm,
                  device: torch.device, log: Callable | None = None,
                  recorder: ScoreRecorder | None = None, events: Any = None,
                  bos_id: int | None = None) -> dict:
    """Per-document LoRA TTT; documents are split contiguously over ranks. Returns val_loss,
    val_bpb, tokens, bytes, seconds, docs, chunks."""
    t0 = time.perf_counter()
    tokens = val_tokens_tensor(val_tokens)
    docs = split_documents(tokens, doc_bos_id(model, bos_id))
    tables = as_byte_tables(tables, device)
    work, lora = lora_work_model(model, ecfg)
    a, b = eval_rank_span(len(docs), comm.rank, comm.world_size)
    acc = BpbAccumulator(device)
    prog = EvalProgress(log if comm.is_main else None, "lora-ttt", "docs", b - a,
                        getattr(ecfg, "budget_seconds", 0.0))
    chunks = adapt_documents(work, lora, tokens, docs[a:b], ecfg, tables, acc, device, recorder,
                             events, prog)
    acc.reduce(comm)
    if recorder is not None:
        recorder.reduce(comm, device)
    out = acc.result(time.perf_counter() - t0)
    out.update(docs=len(docs), chunks=chunks)
    return out
