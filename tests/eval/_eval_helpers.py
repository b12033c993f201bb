"""Tiny models, data and spawn workers for the eval tests (importable by spawned children).

TinyCausalLM is a stand-in that implements the model contract (forward_hidden,
compute_logits, token_nll, forward, num_layers, zero_block_grads_, banked) with causal
cumulative-mean mixing, so the eval tests do not depend on the real GPT. `real_gpt`
builds a tiny pgolf GPT when it is importable.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pgolf.hw import at_least_fp32

VOCAB = 32


class TinyCausalLM(nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = 16, layers: int = 2, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.num_layers = layers
        self.banked = False

    def forward_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        steps = torch.arange(1, ids.shape[1] + 1, device=ids.device, dtype=x.dtype)[None, :, None]
        for blk in self.blocks:
            x = x + torch.tanh(blk(x.cumsum(1) / steps))
        return x

    def compute_logits(self, h: torch.Tensor) -> torch.Tensor:
        return at_least_fp32(self.head(h))  # float64 in the legality audit

    def forward_logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.compute_logits(self.forward_hidden(ids))

    def token_nll(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(ids)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.token_nll(ids, targets).mean()

    def zero_block_grads_(self, layers: list) -> None:
        for i in layers:
            for p in self.blocks[i].parameters():
                if p.grad is not None:
                    p.grad.zero_()


def make_tables(vocab: int = VOCAB, seed: int = 0):
    """Byte tables shaped like build_byte_tables' output: ids 0..2 are 0-byte boundaries."""
    rng = np.random.default_rng(seed)
    base = rng.integers(1, 5, size=vocab).astype(np.int16)
    space = rng.random(vocab) < 0.4
    boundary = np.zeros(vocab, dtype=bool)
    base[:3], space[:3], boundary[:3] = 0, False, True
    return base, space, boundary


def make_tokens(n_targets: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    """A learnable stream (repeating motif + noise) of n_targets + 1 tokens starting with BOS 1."""
    g = torch.Generator().manual_seed(seed)
    motif = torch.randint(3, vocab, (7,), generator=g)
    t = motif.repeat(n_targets // 7 + 2)[:n_targets + 1].clone()
    noise = torch.rand(n_targets + 1, generator=g) < 0.2
    t[noise] = torch.randint(3, vocab, (int(noise.sum()),), generator=g)
    t[0] = 1
    return t


def make_documents(n_targets: int, starts: list[int], bos: int = 1) -> torch.Tensor:
    """make_tokens with BOS exactly at `starts`: documents of known lengths."""
    t = make_tokens(n_targets)
    t[t == bos] = 5
    t[starts] = bos
    return t


def build_real_gpt(seed: int = 0):
    """Tiny real GPT (record arch) with all weights randomized."""
    from pgolf.config import finalize_config
    from pgolf.config_tree import Config
    from pgolf.model.gpt import GPT
    cfg = Config()
    m = cfg.model
    m.arch, m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = "record", 2, 64, 4, 2
    m.vocab_size, m.bigram_vocab_size, m.mlp_mult, m.ve_layers, m.rope_train_len = VOCAB, 64, 2, "-1", 0
    finalize_config(cfg)
    torch.manual_seed(seed)
    model = GPT(cfg.model)
    with torch.no_grad():
        # Zero-initialized projections would make blocks inert; the tests need them active.
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def ttt_dist_worker(rank: int, world: int, store: str, out_dir: str, cfg_kwargs: dict,
                    n_targets: int) -> None:
    """Run eval_ttt in a gloo group of `world` processes and save rank 0's results."""
    import torch.distributed as tdist

    from pgolf.config_tree import EvalConfig
    from pgolf.dist import ProcessGroupComm
    from pgolf.eval.bpb import ScoreRecorder
    from pgolf.eval.ttt import eval_ttt

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        comm = ProcessGroupComm(torch.device("cpu"))
        rec = ScoreRecorder(n_targets)
        events: list = []
        out = eval_ttt(TinyCausalLM(), make_tokens(n_targets), EvalConfig(**cfg_kwargs), make_tables(),
                       comm, torch.device("cpu"), recorder=rec, events=events)
        torch.save(dict(out=out, nll=rec.nll, count=rec.count, events=events),
                   f"{out_dir}/ttt_rank{rank}.pt")
    finally:
        tdist.barrier()  # see ProcessGroupComm.close: leave together or gloo may abort
        tdist.destroy_process_group()


def record_ttt_dist_worker(rank: int, world: int, store: str, out_dir: str, cfg_kwargs: dict,
                           n_targets: int, doc_starts: list) -> None:
    """Run eval_record_ttt (#1855's batched TTT) in a gloo group and save each rank's results."""
    import torch.distributed as tdist

    from pgolf.config_tree import EvalConfig
    from pgolf.dist import ProcessGroupComm
    from pgolf.eval.batched_lora import eval_record_ttt
    from pgolf.eval.bpb import ScoreRecorder

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        comm = ProcessGroupComm(torch.device("cpu"))
        rec = ScoreRecorder(n_targets)
        out = eval_record_ttt(build_real_gpt(), make_documents(n_targets, doc_starts), EvalConfig(**cfg_kwargs),
                              make_tables(), comm, torch.device("cpu"), recorder=rec)
        torch.save(dict(out=out, count=rec.count), f"{out_dir}/record_ttt_rank{rank}.pt")
    finally:
        tdist.barrier()
        tdist.destroy_process_group()
