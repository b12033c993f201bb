"""GPTQ calibration: the tokens (train shards or self-generated, never validation) and the
input Hessians H = X^T X of every block matrix and of the tied output head.

The per-layer model passes its weights to F.linear through the `weight_transform` seam
(pgolf.model.gpt): calibration installs a transform that tags each block matrix, and a tagged
weight records the input of the F.linear it meets. The model itself knows nothing of this.
"""

import dataclasses
import os
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config_tree import Config
from pgolf.data.loader import TokenStream, find_shards
from pgolf.data.paths import resolve_data_paths
from pgolf.data.shards import load_shard, read_header
from pgolf.errors import PgolfError
from pgolf.hw import choose_precision, device_sync
from pgolf.model.gpt import GPT
from pgolf.progress import Progress

CALIB_SOURCES: tuple[str, ...] = ("train", "self")
# Where the tied embedding's Hessian is filed: the head's input is the final hidden state.
HEAD_HESSIAN_NAME = "tok_emb.weight"


class CalibrationError(PgolfError, ValueError):
    """A calibration request that would break the rules or cannot run (one line, with the fix)."""


class HessianSink:
    """Running X^T X per weight name (float64 on the model's device) and row counts."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.rows: dict[str, int] = {}

    def add(self, name: str, x: Tensor) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).double()
        h = x2.T @ x2
        if name in self.sums:
            self.sums[name] += h
        else:
            self.sums[name] = h
        self.rows[name] = self.rows.get(name, 0) + x2.shape[0]

    def hessians(self) -> dict[str, Tensor]:
        """Mean X^T X / rows per name, float32 on the CPU (the scale GPTQ's damping expects)."""
        return {n: (h / max(self.rows[n], 1)).float().cpu() for n, h in self.sums.items()}


class TaggedWeight(Tensor):
    """A weight that files the input of every F.linear it takes part in under its name."""

    @classmethod
    def tag(cls, w: Tensor, name: str, sink: HessianSink) -> "TaggedWeight":
        t = w.detach().as_subclass(cls)
        t.calib_name, t.calib_sink = name, sink
        return t

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, w = args[0], args[1]
            if isinstance(w, TaggedWeight):
                w.calib_sink.add(w.calib_name, x)
            plain = [a.as_subclass(Tensor) if isinstance(a, TaggedWeight) else a for a in args]
            return func(*plain, **kwargs)
        if func in (Tensor.to, Tensor.float, Tensor.type_as) and isinstance(args[0], TaggedWeight):
            # `w.to(x.dtype)` must stay tagged on its way into F.linear.
            src = args[0]
            out = func(src.as_subclass(Tensor), *args[1:], **kwargs)
            return TaggedWeight.tag(out, src.calib_name, src.calib_sink)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


class HessianTap(nn.Module):
    """The weight transform of a calibration pass: tags each block matrix (after any transform
    already installed, e.g. late QAT) so its F.linear inputs reach the sink."""

    def __init__(self, names: dict[int, str], sink: HessianSink, inner: nn.Module | None) -> None:
        super().__init__()
        self.names, self.sink, self.inner = names, sink, inner

    def forward(self, group: str, w: Tensor) -> Tensor:
        name = self.names.get(id(w)) if group == "blocks" else None
        w = self.inner(group, w) if self.inner is not None else w
        return w if name is None else TaggedWeight.tag(w, name, self.sink)


def calibration_tokens(cfg: Config, model: GPT, device, log: Callable[[str], None] | None = None) -> Tensor:
    """[calib_seqs, calib_seq_len] token ids from quant.calib_source (validation refused)."""
    q = cfg.quant
    seq_len = q.calib_seq_len or cfg.run.train_seq_len
    # Every test reads q.calib_source itself, so a bundle frozen to one source ships only that one.
    if q.calib_source == "train" and q.calib_windows == "shuffled":
        return shuffled_calibration_tokens(cfg, seq_len)
    if q.calib_source == "train":
        return train_calibration_tokens(cfg, q.calib_seqs, seq_len)
    if q.calib_source == "self":
        return sample_sequences(model, q.calib_seqs, seq_len, q.calib_temperature, q.calib_batch_seqs,
                                device, seed=cfg.run.seed, log=log)
    # config_checks refuses any other value; this guards a config built around them.
    raise CalibrationError(f"quant.calib_source={q.calib_source!r}: validation tokens may never calibrate the "
                           f"artifact (the challenge scores them); use one of {', '.join(CALIB_SOURCES)}")


def calibration_shards(cfg: Config) -> list[str]:
    """The training shards, none of them a validation shard."""
    train_glob, val_glob, _ = resolve_data_paths(cfg)
    files = find_shards(train_glob)
    val_files = {os.path.abspath(f) for f in find_shards_or_none(val_glob)}
    for f in files:
        if "_val_" in os.path.basename(f) or os.path.abspath(f) in val_files:
            raise CalibrationError(f"calibration shard {f} is a validation shard; validation tokens may never "
                                   "calibrate the artifact: fix data.train_pattern")
    return files


def train_calibration_tokens(cfg: Config, n_seqs: int, seq_len: int) -> Tensor:
    """The first n_seqs x seq_len tokens of the training stream (what training read first)."""
    toks = TokenStream(calibration_shards(cfg)).take(n_seqs * seq_len).view(n_seqs, seq_len)
    return _checked_ids(cfg, toks)


def shuffled_window_starts(lengths: list[int], seq_len: int, count: int, seed: int = 0) -> list[tuple[int, int]]:
    """(shard, start) of `count` windows of seq_len + 1 tokens, drawn as #1855's calibration
    loader draws them: each shard cut at a random phase < seq_len into windows seq_len apart,
    in a random order; each draw picks a shard in proportion to the windows it has left and
    takes its next one; all used up, every shard is cut afresh. One numpy PCG64(seed) drives it."""
    rng = np.random.Generator(np.random.PCG64(seed))
    starts: list[list[int]] = [[] for _ in lengths]

    def recut(i: int) -> None:
        top = min(seq_len - 1, max(0, lengths[i] - seq_len - 1))
        phase = int(rng.integers(top + 1)) if top > 0 else 0
        order = rng.permutation((lengths[i] - 1 - phase) // seq_len)
        starts[i] = (phase + order * seq_len).tolist()

    for i in range(len(lengths)):
        recut(i)
    out = []
    for _ in range(count):
        left = np.array([len(s) for s in starts], dtype=np.float64)
        if left.sum() <= 0:
            for i in range(len(lengths)):
                recut(i)
            left = np.array([len(s) for s in starts], dtype=np.float64)
        shard = int(rng.choice(len(lengths), p=left / left.sum()))
        out.append((shard, starts[shard].pop()))
    return out


def shuffled_calibration_tokens(cfg: Config, seq_len: int) -> Tensor:
    """quant.calib_windows=shuffled: what #1855's rank 0 calibrated on. Its ranks each drew from
    every world_size-th shard with seed = rank and only rank 0's Hessians were used; pgolf takes
    run.accum_world as that world size (the record ran 8 GPUs without accumulation)."""
    q, world = cfg.quant, cfg.run.accum_world
    files = calibration_shards(cfg)[0::world]
    per_batch = cfg.run.train_batch_tokens // world // seq_len
    if per_batch < 1:
        raise CalibrationError(f"quant.calib_windows=shuffled draws run.train_batch_tokens / run.accum_world / "
                               f"{seq_len} windows a batch, which is 0; raise train_batch_tokens")
    draws = shuffled_window_starts([read_header(f) for f in files], seq_len, q.calib_batches * per_batch)
    shards = [load_shard(f) for f in files]
    toks = np.stack([np.asarray(shards[i][a:a + seq_len], dtype=np.int64) for i, a in draws])
    return _checked_ids(cfg, torch.from_numpy(toks))


def _checked_ids(cfg: Config, toks: Tensor) -> Tensor:
    if int(toks.max()) >= cfg.model.vocab_size:
        raise CalibrationError(f"training shards {cfg.data.train_pattern} hold token ids >= model.vocab_size "
                               f"{cfg.model.vocab_size}; use shards made with the model's tokenizer")
    return toks


def find_shards_or_none(pattern: str) -> list[str]:
    try:
        return find_shards(pattern)
    except PgolfError:
        return []


@torch.no_grad()
def sample_sequences(model: GPT, n_seqs: int, seq_len: int, temperature: float, batch: int, device,
                     seed: int = 0, bos: int = 1, log: Callable[[str], None] | None = None) -> Tensor:
    """Autoregressive samples from the model (#1019's self-generated calibration): each
    sequence starts at BOS and draws every next token at `temperature`. No KV cache: every
    step re-reads the prefix, O(T^2) but exact."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    batches = -(-n_seqs // batch)
    lines = Progress(log, "quant:calib_sampling positions", batches * (seq_len - 1))
    for b0 in range(0, n_seqs, batch):
        nb = min(batch, n_seqs - b0)
        ids = torch.full((nb, 1), bos, dtype=torch.long, device=device)
        for t in range(seq_len - 1):
            logits = model.forward_logits(ids)[:, -1].float() / temperature
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
            ids = torch.cat([ids, nxt], dim=1)
            lines.step(b0 // batch * (seq_len - 1) + t + 1)
        out.append(ids.cpu())
    return torch.cat(out)


def block_matrix_names(model: GPT) -> dict[int, str]:
    """id(parameter) -> artifact name of every per-layer block matrix."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {id(p): names[id(p)] for p in model.matrix_params()}


@torch.no_grad()
def collect_hessians(model: GPT, tokens: Tensor, batch_seqs: int, device, with_head: bool = False,
                     log: Callable[[str], None] | None = None) -> dict[str, Tensor]:
    """Mean input Hessians of every block matrix of a per-layer (unbanked) model, by name;
    with_head adds the tied head's (the final hidden states) as HEAD_HESSIAN_NAME."""
    if model.banked:
        raise CalibrationError("Hessians need the per-layer model: build GPT(cfg.model, banked=False)")
    sink = HessianSink()
    saved = model.weight_transform
    tap = HessianTap(block_matrix_names(model), sink, saved)
    model.weight_transform = tap
    lines = Progress(log, "quant:calibration batches", -(-tokens.shape[0] // batch_seqs))
    try:
        for b0 in range(0, tokens.shape[0], batch_seqs):
            h = model.forward_hidden(tokens[b0:b0 + batch_seqs].to(device))
            if with_head:
                sink.add(HEAD_HESSIAN_NAME, h)
            if log is not None:
                device_sync(device)  # the ETA counts the batch's Hessians, not its launch
            lines.step(b0 // batch_seqs + 1)
    finally:
        model.weight_transform = saved
    return sink.hessians()


def per_layer_model(cfg: Config, flat: dict[str, Tensor], device) -> GPT:
    """An eval-mode per-layer model holding the unbanked state `flat` (artifact names)."""
    # Tables in the dtype the run trained them in on this machine (fp32 where bf16 is emulated).
    table = choose_precision(cfg.run.low_precision, torch.device(device)).table_dtype(cfg.model.embed_dtype)
    mcfg = dataclasses.replace(cfg.model, embed_dtype=table)
    if cfg.quant.calib_attention == "dense":  # #1855 calibrates without cu_seqlens: across documents
        mcfg = dataclasses.replace(mcfg, doc_mask=False)
    model = GPT(mcfg, banked=False).to(device)
    model.load_state_dict({k: v.to(device) for k, v in flat.items()})
    return model.eval()


def calibrate(cfg: Config, flat: dict[str, Tensor], device, log: Callable[[str], None] | None = None
              ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Calibration tokens -> Hessians for the unbanked state `flat`, and what it cost; log gets
    progress lines."""
    t0 = time.perf_counter()
    model = per_layer_model(cfg, flat, device)
    toks = calibration_tokens(cfg, model, device, log=log)
    t1 = time.perf_counter()
    hs = collect_hessians(model, toks, cfg.quant.calib_batch_seqs, device, with_head=cfg.quant.gptq_embed, log=log)
    info = {"calib_source": cfg.quant.calib_source, "calib_windows": cfg.quant.calib_windows,
            "calib_tokens": int(toks.numel()),
            "calib_tokens_s": round(t1 - t0, 3), "hessians_s": round(time.perf_counter() - t1, 3)}
    return hs, info
