"""Phased TTT: per-document LoRA TTT that pauses to train the whole model on what it scored.

The first eval.ttt_phased_prefix_docs documents are cut into eval.ttt_phased_phases equal
groups (#1855: 2500 documents, 3 phases, pauses after documents 833, 1666 and 2500). After each
group is scored, every weight of the base model takes SGD steps on the whole scored prefix
(cumulative: phase p trains on documents [0, boundary_p)), with the ttt_* SGD settings of
score-first TTT (#1855: lr 0.001, momentum 0.9, 1 epoch, 32,768-token chunks, 32 sequences per
step, clip 1.0) and a cosine lr over the prefix's chunks that reaches 0 at the last one, which is
therefore skipped as in the records. Then scoring resumes with the updated model.

pgolf keeps the stream order: the records sort documents by length into batches for speed,
so a document could be scored by a model already trained on documents after it in the stream,
which breaks condition (1); here the prefix is always the stream's first documents.
"""

import time
from typing import Any, Callable

import torch

from pgolf.dist import Comm
from pgolf.eval.bpb import (
    BpbAccumulator,
    EvalInputError,
    EvalProgress,
    ScoreRecorder,
    as_byte_tables,
    eval_rank_span,
    val_tokens_tensor,
)
from pgolf.eval.lora_ttt import (
    DocLora,
    adapt_documents,
    doc_bos_id,
    lora_work_model,
    split_documents,
)
from pgolf.eval.ttt import (
    _cosine_lr,
    _train_chunk,
    ttt_chunk_bounds,
    ttt_train_sequences,
)
from pgolf.progress import Progress


def phase_boundaries(prefix_docs: int, phases: int, n_docs: int) -> list[int]:
    """Document counts after which a global phase runs: the records' k*(p+1)//phases, without
    repeats, and none at the very end (nothing would be left to score with it)."""
    if phases < 1:
        raise EvalInputError(f"eval.ttt_phased_phases must be >= 1, got {phases}")
    k = max(0, min(prefix_docs, n_docs))
    out: list[int] = []
    for p in range(phases):
        b = k * (p + 1) // phases
        if 0 < b < n_docs and b not in out:
            out.append(b)
    return out


def global_sgd(work: torch.nn.Module, lora: DocLora, tokens: torch.Tensor, n_targets: int,
               ecfg: Any, comm: Comm, device: torch.device, events: Any = None, log: Any = None) -> int:
    """SGD of every base weight on scored targets [0, n_targets); adapters are off meanwhile.
    Returns the chunks trained. `log`: progress lines (a phase can train for minutes)."""
    work.weight_transform = lora.inner
    params = list(work.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=ecfg.ttt_lr, momentum=ecfg.ttt_momentum)
    chunks = ttt_chunk_bounds(n_targets, ecfg.ttt_chunk_tokens)
    prog = Progress(log, "eval:phased-ttt_global_sgd chunks", len(chunks))
    trained = 0
    for c, (lo, hi) in enumerate(chunks):
        prog.step(c)
        lr = _cosine_lr(ecfg.ttt_lr, c, len(chunks))
        if ecfg.ttt_epochs <= 0 or (c == len(chunks) - 1 and len(chunks) > 1) or lr <= 0:
            continue
        for g in opt.param_groups:
            g["lr"] = lr
        _train_chunk(work, opt, params, tokens, ttt_train_sequences(lo, hi, ecfg.seq_len),
                         ecfg, comm, device, events)
        trained += 1
    prog.step(len(chunks))
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    if lora.active:
        work.weight_transform = lora
    return trained


def eval_phased_ttt(model: torch.nn.Module, val_tokens: Any, ecfg: Any, tables: Any, comm: Comm,
                    device: torch.device, log: Callable | None = None,
                    recorder: ScoreRecorder | None = None, events: Any = None,
                    bos_id: int | None = None) -> dict:
    """Phased TTT; each phase's documents are split contiguously over ranks, and every rank runs
    the same global SGD. Returns val_loss, val_bpb, tokens, bytes, seconds, docs, chunks,
    phases (global phases run), boundaries, score_seconds, train_seconds."""
    t0 = time.perf_counter()
    tokens = val_tokens_tensor(val_tokens)
    docs = split_documents(tokens, doc_bos_id(model, bos_id))
    tables = as_byte_tables(tables, device)
    bounds = phase_boundaries(ecfg.ttt_phased_prefix_docs, ecfg.ttt_phased_phases, len(docs))
    work, lora = lora_work_model(model, ecfg)
    acc = BpbAccumulator(device)
    segments = list(zip([0] + bounds, bounds + [len(docs)]))
    spans = [eval_rank_span(d1 - d0, comm.rank, comm.world_size) for d0, d1 in segments]
    prog = EvalProgress(log if comm.is_main else None, "phased-ttt", "docs",
                        sum(b - a for a, b in spans), getattr(ecfg, "budget_seconds", 0.0))
    chunks = done = 0
    score_s = train_s = 0.0
    for p, ((d0, d1), (a, b)) in enumerate(zip(segments, spans)):
        ts = time.perf_counter()
        mine = docs[d0 + a:d0 + b]
        chunks += adapt_documents(work, lora, tokens, mine, ecfg, tables, acc, device, recorder,
                                  events, prog, done)
        done += len(mine)
        tt = time.perf_counter()
        score_s += tt - ts
        if p < len(bounds):
            trained = global_sgd(work, lora, tokens, docs[d1][0], ecfg, comm, device, events,
                                 log if comm.is_main else None)
            if log is not None and comm.is_main:
                log(f"eval:phased-ttt phase:{p + 1}/{len(bounds)} docs:{d1} trained_chunks:{trained} "
                    f"running_bpb:{acc.val_bpb:.6f}")
        train_s += time.perf_counter() - tt
    acc.reduce(comm)
    if recorder is not None:
        recorder.reduce(comm, device)
    out = acc.result(time.perf_counter() - t0)
    out.update(docs=len(docs), chunks=chunks, phases=len(bounds), boundaries=bounds,
               score_seconds=score_s, train_seconds=train_s)
    return out

