"""Batched LoRA TTT and phased TTT as record #1855 runs them (eval.ttt_lora_method = record).

Documents run from their BOS through the next document's BOS (the last target predicts it).
They are sorted by length, cut into batches of eval.ttt_lora_batch, and the batches run
longest first, each batch row holding one document with its own adapters. Every adapter is a
side path s*B@A (s = alpha/rank) added through GPT.side_paths: to q, k, v and o from the
block's normed input, to the MLP output from the MLP's normed input, and to the logits from
the final hidden state, with one adapter set per schedule slot (each pass of a looped block
has its own). Each chunk of eval.ttt_lora_chunk targets is scored through a window of at most
ttt_lora_eval_seq_len tokens of its document, THEN one AdamW step on the sum over the batch's
documents that have a later chunk of each one's mean NLL on it. Between batches B and the
optimizer state restart from zero; A keeps its trained values (ttt_lora_warm_a) and is drawn
afresh only for a batch of another size and after each global phase.

Phased: after the first ttt_phased_prefix_docs documents IN PROCESSING ORDER (the
length-sorted batches), split into ttt_phased_phases groups, every base weight takes SGD
steps on the documents scored so far, concatenated in sorted-batch order and cut to the
boundary count; documents are kept apart in attention by segment starts (ttt_global_doc_mask).

Legality: the order is not the stream's. A document scored after a global phase was scored by
a model trained on documents that come after it in the validation stream, so the phased score
does not meet the causal condition (1); the batched LoRA alone is per-document and does.
Ranks take the batches round-robin (batch q on rank q % world); the phase boundaries count
documents of whole rounds, so one rank reproduces the record exactly.
"""

import copy
import math
import time
from typing import Any, Callable

import torch

from pgolf.dist import Comm
from pgolf.eval.bpb import (
    BpbAccumulator,
    EvalProgress,
    ScoreRecorder,
    as_byte_tables,
    eval_emit_event,
    val_tokens_tensor,
)
from pgolf.hw import at_least_fp32, compute_autocast
from pgolf.model.attention import segment_starts
from pgolf.progress import Progress

# The adapters' A is drawn from a generator of its own, so the draws do not depend on what
# ran before the evaluation.
BATCHED_LORA_SEED = 0
LEGALITY_NOTE = ("documents run in length order, so a document scored after a global phase was "
                 "scored by a model trained on later-in-stream documents (not causal)")


def record_documents(tokens: torch.Tensor, bos_id: int) -> list[tuple[int, int]]:
    """(start, length) of each document: its BOS through the next BOS inclusive; the last runs
    to the end of the stream; tokens before the first BOS belong to none."""
    bos = torch.nonzero(tokens.cpu() == bos_id).flatten().tolist()
    ends = [b + 1 for b in bos[1:]] + [tokens.numel()]
    return [(a, e - a) for a, e in zip(bos, ends) if e - a >= 2]


def record_batches(docs: list[tuple[int, int]], batch_size: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """(sorted index, documents) of each batch in processing order: documents sorted by length,
    cut into batches, the batches run by longest document first (ties keep sorted order)."""
    ordered = sorted(docs, key=lambda d: d[1])
    batches = list(enumerate(ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)))
    return sorted(batches, key=lambda ib: -max(n for _, n in ib[1]))


def chunk_window(ci: int, pred_len: int, n_chunks: int, chunk: int, seq_len: int) -> tuple[int, int, int, int]:
    """(window start, window length, chunk offset in the window, chunk length) of chunk ci of
    a document with pred_len targets; offsets are relative to the document start."""
    end = pred_len if ci == n_chunks - 1 else (ci + 1) * chunk
    start = max(0, end - seq_len)
    return start, end - start, ci * chunk - start, end - ci * chunk


class SideAdapters:
    """One LoRA side path per (point, schedule slot) for each of bsz batch rows: output
    x @ A^T @ B^T * alpha/rank, with A [bsz, rank, in] and B [bsz, out, rank].

    Not an nn.Module: installed as GPT.side_paths it must not become a model parameter (the
    global phases train the model's own parameters only)."""

    def __init__(self, model: torch.nn.Module, bsz: int, ecfg: Any, gen: torch.Generator,
                 device: torch.device) -> None:
        cfg = model.cfg
        d, rank = cfg.model_dim, ecfg.ttt_lora_rank
        kv = d // cfg.num_heads * cfg.num_kv_heads
        slots = model.side_path_slots()
        self.bsz, self.gen, self.warm_a = bsz, gen, ecfg.ttt_lora_warm_a
        self.scale = ecfg.ttt_lora_alpha / rank if ecfg.ttt_lora_alpha > 0 else 1.0
        # (point, in, out, slots) in the order the record draws its A's.
        shapes = [("head", d, cfg.vocab_size, 1), ("q", d, d, slots), ("v", d, kv, slots)]
        shapes += [("k", d, kv, slots)] if ecfg.ttt_lora_k else []
        shapes += [("mlp", d, d, slots)] if ecfg.ttt_lora_mlp else []
        shapes += [("o", d, d, slots)] if ecfg.ttt_lora_o else []
        self.pairs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for point, n_in, n_out, n in shapes:
            self.pairs[point] = [(self._draw(torch.empty(bsz, rank, n_in)).to(device).requires_grad_(True),
                                  torch.zeros(bsz, n_out, rank, device=device, requires_grad=True))
                                 for _ in range(n)]

    def _draw(self, a: torch.Tensor) -> torch.Tensor:
        bound = 1.0 / math.sqrt(a.shape[-1])
        return a.uniform_(-bound, bound, generator=self.gen)

    def params(self) -> list[torch.Tensor]:
        return [t for pairs in self.pairs.values() for pair in pairs for t in pair]

    @torch.no_grad()
    def reset(self) -> None:
        """B to zero; A redrawn unless it is carried over (ttt_lora_warm_a)."""
        for pairs in self.pairs.values():
            for a, b in pairs:
                if not self.warm_a:
                    a.copy_(self._draw(torch.empty(a.shape)))
                b.zero_()

    def __call__(self, point: str, slot: int, x: torch.Tensor) -> torch.Tensor | None:
        pairs = self.pairs.get(point)
        if pairs is None:
            return None
        a, b = pairs[slot]
        return (x @ a.transpose(1, 2).to(x.dtype)) @ b.transpose(1, 2).to(x.dtype) * self.scale

    def optimizer(self, ecfg: Any, device: torch.device) -> torch.optim.Optimizer:
        # eps 1e-10 as the record: B starts at 0 and its first moments are tiny.
        return torch.optim.AdamW(self.params(), lr=ecfg.ttt_lora_lr, eps=1e-10, weight_decay=ecfg.ttt_lora_wd,
                                 betas=(ecfg.ttt_lora_beta1, ecfg.ttt_lora_beta2), fused=device.type == "cuda")


def _row_bytes(tables: Any, starts: torch.Tensor, width: int, n_tokens: int, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
    """[B, width] bytes of targets start+1+j: a sidecar's per-position counts (windows that
    would run past the stream are read shifted back; their out-of-stream columns are unused),
    else the tables' (previous, target) counts."""
    if not hasattr(tables, "window_bytes"):
        return tables.token_bytes(x, y)
    w = min(width, n_tokens - 1)
    shifted = starts.clamp(max=n_tokens - 1 - w)
    got = tables.window_bytes(shifted, w).to(x.device)
    cols = (torch.arange(width)[None] + (starts - shifted)[:, None]).clamp(max=w - 1).to(x.device)
    return torch.gather(got, 1, cols)


def score_batch(work: torch.nn.Module, lora: SideAdapters, opt: torch.optim.Optimizer, tokens: torch.Tensor,
                batch: list[tuple[int, int]], ecfg: Any, tables: Any, acc: BpbAccumulator, device: torch.device,
                recorder: ScoreRecorder | None = None, events: Any = None) -> int:
    """Score one batch of documents chunk by chunk, one AdamW step after each chunk that a
    document continues past; returns the chunks scored."""
    chunk, seq_len = ecfg.ttt_lora_chunk, ecfg.ttt_lora_eval_seq_len or ecfg.seq_len
    n = tokens.numel()
    pred = [length - 1 for _, length in batch]
    n_chunks = [(p + chunk - 1) // chunk for p in pred]
    trains = torch.tensor(n_chunks, device=device)
    work.side_paths = lora
    scored = 0
    for ci in range(max(n_chunks)):
        rows = [chunk_window(ci, p, nc, chunk, seq_len) if ci < nc else (0, 0, 0, 0)
                for p, nc in zip(pred, n_chunks)]
        starts = torch.tensor([d[0] + r[0] if r[1] else 0 for d, r in zip(batch, rows)])
        wl, off, ln = (torch.tensor([r[k] for r in rows]) for k in (1, 2, 3))
        _, width, train_off, _ = chunk_window(ci, (ci + 1) * chunk, ci + 1, chunk, seq_len)
        col = torch.arange(width + 1)
        got = tokens[(starts[:, None] + col[None]).clamp(max=n - 1)].to(device).long()
        valid = (col[None, :width] < wl[:, None]).to(device)
        x = torch.where(valid, got[:, :width], 0)
        y = torch.where(valid, got[:, 1:], 0)
        needs_train = any(ci < nc - 1 for nc in n_chunks)
        for step in range(ecfg.ttt_lora_steps if needs_train else 1):
            with torch.set_grad_enabled(needs_train), compute_autocast(device):
                nll = at_least_fp32(work.token_nll(x, y))
            if step == 0:
                pos = torch.arange(width, device=device)[None]
                o, l_ = off.to(device)[:, None], ln.to(device)[:, None]
                mask = (l_ > 0) & (pos >= o) & (pos < o + l_)
                acc.add(nll.detach(), x, y, tables, mask=mask,
                        nbytes=_row_bytes(tables, starts, width, n, x, y).to(device))
                scored += int(sum(1 for r in rows if r[3] > 0))
                _record(recorder, events, starts, off, ln, nll)
            if not needs_train:
                break
            per_doc = nll[:, train_off:train_off + chunk].mean(dim=-1)
            opt.zero_grad(set_to_none=True)
            (per_doc * (trains - 1 > ci).float()).sum().backward()
            opt.step()
            for s, r, nc in zip(starts.tolist(), rows, n_chunks):
                if ci < nc - 1:
                    eval_emit_event(events, "train", s, s + r[1])
    work.side_paths = None
    return scored


def _record(recorder: ScoreRecorder | None, events: Any, starts: torch.Tensor, off: torch.Tensor,
            ln: torch.Tensor, nll: torch.Tensor) -> None:
    if recorder is None and events is None:
        return
    for b, (s, o, l_) in enumerate(zip(starts.tolist(), off.tolist(), ln.tolist())):
        if l_ > 0:
            if recorder is not None:
                recorder.add(s + o, nll[b, o:o + l_].detach())
            eval_emit_event(events, "score", s + o, s + o + l_)


def record_global_sgd(work: torch.nn.Module, tokens: torch.Tensor, ecfg: Any, comm: Comm, device: torch.device,
                      bos_id: int, log: Any = None) -> int:
    """SGD of every base weight over tokens (concatenated scored documents): cosine lr over
    ttt_chunk_tokens chunks, the last skipped; each step one packed row of up to ttt_batch_seqs
    sequences of seq_len, split over ranks. Returns the optimizer steps taken."""
    params = list(work.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=ecfg.ttt_lr, momentum=ecfg.ttt_momentum)
    seq, bs, world = ecfg.seq_len, max(1, ecfg.ttt_batch_seqs), comm.world_size
    total = tokens.numel() - 1
    n_chunks = (total + ecfg.ttt_chunk_tokens - 1) // ecfg.ttt_chunk_tokens
    steps = 0
    todo = n_chunks - 1 if ecfg.ttt_epochs > 0 else 0
    prog = Progress(log, "eval:record-ttt_global_sgd chunks", todo)  # a phase can train for minutes
    for ci in range(todo):
        prog.step(ci)
        c0 = ci * ecfg.ttt_chunk_tokens
        n_seqs = (min(c0 + ecfg.ttt_chunk_tokens, total) - c0) // seq
        if n_seqs <= 0:
            continue
        for g in opt.param_groups:
            g["lr"] = ecfg.ttt_lr * 0.5 * (1.0 + math.cos(math.pi * ci / max(n_chunks - 1, 1)))
        shares = [(n_seqs * r // world, n_seqs * (r + 1) // world) for r in range(world)]
        for _ in range(ecfg.ttt_epochs):
            for k in range(0, max(b - a for a, b in shares), bs):
                rows = [(c0 + (a + k) * seq, c0 + (a + min(k + bs, b - a)) * seq + 1) for a, b in shares]
                live = [k < b - a and hi <= tokens.numel() for (a, b), (_, hi) in zip(shares, rows)]
                if not any(live):
                    continue
                opt.zero_grad(set_to_none=True)
                lo, hi = rows[comm.rank]
                if live[comm.rank]:
                    local = tokens[lo:hi].to(device).long()
                    x, y = local[:-1], local[1:]
                    if ecfg.ttt_global_doc_mask:
                        x, y = x[None], y[None]
                        starts = segment_starts(x, bos_id, seq)
                    else:
                        x, y = x.view(-1, seq), y.view(-1, seq)
                        starts = torch.zeros_like(x, dtype=torch.bool)
                        starts[:, 0] = True
                    with torch.enable_grad(), compute_autocast(device):
                        work(x, y, starts).backward()
                if world > 1:
                    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                      for p in params])
                    comm.all_reduce_sum(flat)
                    flat /= world
                    off = 0
                    for p in params:
                        p.grad = flat[off:off + p.numel()].view_as(p).clone()
                        off += p.numel()
                if ecfg.ttt_grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, ecfg.ttt_grad_clip)
                opt.step()
                steps += 1
    prog.step(todo)
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    return steps


def eval_record_ttt(model: torch.nn.Module, val_tokens: Any, ecfg: Any, tables: Any, comm: Comm,
                    device: torch.device, log: Callable | None = None, recorder: ScoreRecorder | None = None,
                    events: Any = None, bos_id: int | None = None, phased: bool | None = None) -> dict:
    """Batched LoRA TTT (phased when ecfg.ttt_kind is phased). Returns val_loss, val_bpb, tokens,
    bytes, seconds, docs, chunks, phases, boundaries."""
    t0 = time.perf_counter()
    phased = ecfg.ttt_kind == "phased" if phased is None else phased
    tokens = val_tokens_tensor(val_tokens)
    bos = int(model.cfg.bos_id if bos_id is None else bos_id)
    docs = record_documents(tokens, bos)
    batches = record_batches(docs, ecfg.ttt_lora_batch)
    tables = as_byte_tables(tables, device)
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.requires_grad_(False)
    work.side_paths = None
    gen = torch.Generator().manual_seed(BATCHED_LORA_SEED)
    limit = min(len(docs), ecfg.ttt_phased_prefix_docs) if phased else 0
    phases = max(1, ecfg.ttt_phased_phases)
    bounds = [limit * (p + 1) // phases for p in range(phases)]
    if log is not None and comm.is_main:
        log(f"eval:record-ttt {'phased' if phased else 'lora'} docs:{len(docs)} batches:{len(batches)} "
            f"prefix_docs:{limit} boundaries:{bounds if phased else []}"
            + (f" NOT CAUSAL: {LEGALITY_NOTE}" if phased and limit else ""))
    reusable = SideAdapters(work, ecfg.ttt_lora_batch, ecfg, gen, device)
    acc = BpbAccumulator(device)
    prog = EvalProgress(log if comm.is_main else None, "record-ttt", "batches", len(batches),
                        getattr(ecfg, "budget_seconds", 0.0))
    world, phase, counted, chunks, done = comm.world_size, 0, 0, 0, limit == 0
    for r0 in range(0, len(batches), world):
        if r0 + comm.rank < len(batches):
            batch = [d for d in batches[r0 + comm.rank][1]]
            if len(batch) == reusable.bsz:
                reusable.reset()
                lora = reusable
            else:
                lora = SideAdapters(work, len(batch), ecfg, gen, device)
            chunks += score_batch(work, lora, lora.optimizer(ecfg, device), tokens, batch, ecfg, tables, acc,
                                  device, recorder, events)
        prog.step(min(r0 + world, len(batches)), acc)
        if done:
            continue
        counted += sum(len(b) for _, b in batches[r0:r0 + world])
        if counted < bounds[phase]:
            continue
        seen = sorted((i, pos, d) for i, b in batches[:r0 + world] for pos, d in enumerate(b))[:bounds[phase]]
        prefix = torch.cat([tokens[s:s + n] for _, _, (s, n) in seen]) if seen else tokens[:0]
        for _, _, (s, n) in seen:  # stream targets the phase trains on, for the legality audit
            eval_emit_event(events, "train", s, s + n - 1)
        steps = record_global_sgd(work, prefix, ecfg, comm, device, bos, log if comm.is_main else None)
        if log is not None and comm.is_main:
            log(f"eval:record-ttt phase:{phase + 1}/{phases} docs:{len(seen)} scored:{counted} "
                f"sgd_steps:{steps} running_bpb:{acc.val_bpb:.6f}")
        reusable = SideAdapters(work, ecfg.ttt_lora_batch, ecfg, gen, device)
        phase += 1
        done = phase >= phases
    acc.reduce(comm)
    if recorder is not None:
        recorder.reduce(comm, device)
    out = acc.result(time.perf_counter() - t0)
    out.update(docs=len(docs), chunks=chunks, phases=phase, boundaries=bounds if phased else [])
    return out
