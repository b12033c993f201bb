"""The GPT of the naive baseline and of records #549/#1128, in one readable class.

Data flow: token embedding (+ BigramHash) -> RMSNorm -> SmearGate = x0; each block mixes
x with x0, runs attention and MLP on scaled normed inputs; the first half of the blocks
push their outputs and the second half pop them (U-Net); final RMSNorm = hidden state;
tied head + soft-cap = logits. `model.arch=record` keeps the block matrices in parameter
banks; `baseline` keeps per-layer weights with the same names the artifact uses.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig, parse_layers
from pgolf.model.attention import Attention, Rotary, rms_norm
from pgolf.model.banks import block_bank_indices
from pgolf.model.embeddings import BigramHash, SmearGate, ValueEmbedding
from pgolf.model.mlp import MLP


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, own_weights: bool) -> None:
        super().__init__()
        dim = cfg.model_dim
        self.attn = Attention(dim, cfg.num_heads, cfg.num_kv_heads, cfg.qk_gain_init, own_weights)
        self.mlp = MLP(dim, int(cfg.mlp_mult * dim), cfg.leaky_slope, own_weights)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))
        self.ln_mult = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        self.xsa = layer >= cfg.num_layers - cfg.xsa_last_n

    def forward(self, x, x0, w: tuple, rotary: Rotary, backend: str, v_extra=None):
        wq, wk, wv, wo, w_up, w_down = w
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        a = self.attn(rms_norm(x) * self.ln_mult, wq, wk, wv, wo, rotary, backend, self.xsa, v_extra)
        x = x + self.attn_scale.to(x.dtype) * a
        m = self.mlp(rms_norm(x) * self.ln_mult, w_up, w_down)
        return x + self.mlp_scale.to(x.dtype) * m


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, banked: bool | None = None) -> None:
        super().__init__()
        if cfg.leaky_slope is None:
            raise ValueError("GPT needs a finalized ModelConfig (call pgolf.config.finalize_config)")
        self.cfg = cfg
        self.banked = cfg.arch == "record" if banked is None else banked
        L, d = cfg.num_layers, cfg.model_dim
        self.num_layers = L
        head_dim = d // cfg.num_heads
        kv_dim = head_dim * cfg.num_kv_heads
        hidden = int(cfg.mlp_mult * d)
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.bigram = BigramHash(cfg.bigram_vocab_size, cfg.bigram_dim, d) if cfg.bigram_vocab_size else None
        self.smear = SmearGate(d) if cfg.smear else None
        self.ve_layers = parse_layers(cfg.ve_layers, L) if cfg.ve_enabled else []
        self.ve = ValueEmbedding(cfg.vocab_size, cfg.ve_dim, kv_dim, len(self.ve_layers)) if self.ve_layers else None
        self.blocks = nn.ModuleList(Block(cfg, i, not self.banked) for i in range(L))
        if self.banked:
            self.qo_bank = nn.Parameter(torch.empty(2 * L, d, d))
            self.kv_bank = nn.Parameter(torch.empty(2 * L, kv_dim, d))
            self.mlp_up_bank = nn.Parameter(torch.empty(L, hidden, d))
            self.mlp_down_bank = nn.Parameter(torch.empty(L, d, hidden))
        self.num_encoder = L // 2 if cfg.unet_skips else 0
        num_skips = min(self.num_encoder, L - self.num_encoder)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, d)) if num_skips else None
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(d, cfg.vocab_size, bias=False)
        self.rotary = Rotary(head_dim, cfg.rope_dims, cfg.rope_base, cfg.rope_train_len)
        self.attn_backend = "sdpa"
        # A seam for transforms applied from outside (late QAT): called as
        # weight_transform(group, w) on "blocks" (block matrices) and "projections"
        # (BigramHash / VE projections); None = weights used as stored.
        self.weight_transform: nn.Module | None = None
        self.reset_parameters()
        if cfg.embed_dtype == "bf16":
            # The reference trains these tables in bf16 (the model is cast to bf16 and only
            # small/control tensors and linear layers are restored to fp32).
            for table in self.embedding_params():
                table.data = table.data.to(torch.bfloat16)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.tok_emb.weight, std=self.cfg.tied_embed_init_std)
        if self.bigram is not None:
            self.bigram.reset_parameters()
        if self.ve is not None:
            self.ve.reset_parameters(0.01)
        if self.lm_head is not None:
            nn.init.zeros_(self.lm_head.weight)
        for name, w in self._block_matrices_by_role():
            if name in ("proj", "down"):
                nn.init.zeros_(w)
            else:
                nn.init.orthogonal_(w)

    def _block_matrices_by_role(self):
        """(role, 2-D tensor view) for every block matrix, banked or not."""
        L = self.num_layers
        for i, blk in enumerate(self.blocks):
            if self.banked:
                yield from (("q", self.qo_bank[i]), ("proj", self.qo_bank[L + i]),
                            ("k", self.kv_bank[i]), ("v", self.kv_bank[L + i]),
                            ("up", self.mlp_up_bank[i]), ("down", self.mlp_down_bank[i]))
            else:
                yield from (("q", blk.attn.c_q.weight), ("proj", blk.attn.proj.weight),
                            ("k", blk.attn.c_k.weight), ("v", blk.attn.c_v.weight),
                            ("up", blk.mlp.fc.weight), ("down", blk.mlp.proj.weight))

    # ---- parameter groups (the optimizer builder reads these) ----
    def matrix_params(self) -> list[nn.Parameter]:
        if self.banked:
            return [self.qo_bank, self.kv_bank, self.mlp_up_bank, self.mlp_down_bank]
        return [p for b in self.blocks for p in (b.attn.c_q.weight, b.attn.c_k.weight, b.attn.c_v.weight,
                                                 b.attn.proj.weight, b.mlp.fc.weight, b.mlp.proj.weight)]

    def embedding_params(self) -> list[nn.Parameter]:
        tables = [self.tok_emb.weight]
        tables += [self.bigram.embed.weight] if self.bigram is not None else []
        tables += [self.ve.embed.weight] if self.ve is not None else []
        return tables

    def scalar_params(self) -> list[nn.Parameter]:
        taken = {id(p) for p in self.matrix_params() + self.embedding_params()}
        if self.lm_head is not None:
            taken.add(id(self.lm_head.weight))
        return [p for p in self.parameters() if id(p) not in taken]

    def zero_block_grads_(self, layers: list[int]) -> None:
        """Zero the gradients of whole blocks, bank slices included (TTT freezing)."""
        for i in layers:
            for p in self.blocks[i].parameters():
                if p.grad is not None:
                    p.grad.zero_()
            if self.banked:
                for bank, rows in block_bank_indices(i, self.num_layers).items():
                    g = getattr(self, bank).grad
                    if g is not None:
                        g[rows] = 0

    # ---- weights as the forward sees them ----
    def _weight(self, group: str, w: torch.Tensor) -> torch.Tensor:
        t = self.weight_transform
        return w if t is None else t(group, w)

    def _layer_weights(self):
        """Per-layer weight tuples (q, k, v, out, up, down), transformed once per bank."""
        L = self.num_layers
        if self.banked:
            qo, kv, up, down = (self._weight("blocks", b) for b in self.matrix_params())
            return [(qo[i], kv[i], kv[L + i], qo[L + i], up[i], down[i]) for i in range(L)]
        ws = [self._weight("blocks", w) for w in self.matrix_params()]
        return [tuple(ws[6 * i:6 * i + 6]) for i in range(L)]

    # ---- forward ----
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        # Tables may be stored in bf16 (model.embed_dtype); compute stays in fp32 here and
        # autocast decides the matmul precision.
        x = self.tok_emb(ids).float()
        if self.bigram is not None:
            x = x + self.bigram(ids, self._weight("projections", self.bigram.proj.weight))
        x = rms_norm(x)
        return self.smear(x) if self.smear is not None else x

    def forward_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Everything up to and including the final RMSNorm: [B, T, d]."""
        x = x0 = self.embed(ids)
        ve = self.ve(ids, self._weight("projections", self.ve.proj.weight)) if self.ve is not None else None
        weights = self._layer_weights()
        skips: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            j = i - self.num_encoder
            if j >= 0 and skips:
                x = x + self.skip_weights[j].to(x.dtype) * skips.pop()
            v_extra = None
            if ve is not None and i in self.ve_layers:
                v_extra = ve * self.ve.layer_scales[self.ve_layers.index(i)].to(ve.dtype)
            x = blk(x, x0, weights[i], self.rotary, self.attn_backend, v_extra)
            if i < self.num_encoder:
                skips.append(x)
        return rms_norm(x)

    def compute_logits(self, h: torch.Tensor) -> torch.Tensor:
        w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(h, w.to(h.dtype)).float()
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def forward_logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.compute_logits(self.forward_hidden(ids))

    def token_nll(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(ids)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(ids)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
