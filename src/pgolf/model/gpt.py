"""The GPT of the naive baseline, records #549/#1128 and the frontier switches, in one class.

Data flow: token embedding (+ BigramHash) (-> input SmearGate) -> RMSNorm (-> channel
SmearGate) = x0; each block mixes x with x0, runs attention and MLP on scaled normed inputs;
the first half of the schedule pushes its outputs and the rest pops them (U-Net, optionally
gated); from model.parallel_start on, attention and MLP run on two lanes; final RMSNorm =
hidden state; tied head + soft-cap = logits. The schedule may loop a range of blocks (depth
recurrence, model/stack.py). `model.arch=record` keeps the block matrices in parameter banks;
`baseline` keeps per-layer weights with the same names the artifact uses.

Dimensions: B batch, T tokens, d model_dim, H query heads, L blocks.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import parse_layers
from pgolf.config_tree import ModelConfig
from pgolf.hw import at_least_fp32, doc_attention_kernel
from pgolf.model.attention import Attention, Rotary, doc_layout, rms_norm, segment_layout
from pgolf.model.banks import block_bank_indices
from pgolf.model.embeddings import BigramHash, SmearGate, ValueEmbedding, input_smear, not_bos_mask
from pgolf.model.mlp import MLP
from pgolf.model.stack import encoder_length, layer_schedule, loop_mlp_slot, num_loop_mlps, num_skip_weights


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, own_weights: bool) -> None:
        super().__init__()
        dim = cfg.model_dim
        self.attn = Attention(dim, cfg.num_heads, cfg.num_kv_heads, cfg.qk_gain_init, own_weights,
                              cfg.attn_gate, cfg.gate_window, cfg.attn_gate_scale, cfg.attn_gate_init_std)
        self.mlp = MLP(dim, int(cfg.mlp_mult * dim), cfg.leaky_slope, own_weights)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))
        self.ln_mult = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        self.xsa = layer >= cfg.num_layers - cfg.xsa_last_n

    def forward(self, x, x0, w: tuple, rotary: Rotary, backend: str, v_extra=None, docs=None, side=None):
        wq, wk, wv, wo, w_up, w_down = w
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        a = self.attn(rms_norm(x) * self.ln_mult, wq, wk, wv, wo, rotary, backend, self.xsa, v_extra, docs, side)
        x = x + self.attn_scale.to(x.dtype) * a
        m = self._mlp(rms_norm(x) * self.ln_mult, w_up, w_down, side)
        return x + self.mlp_scale.to(x.dtype) * m

    def _mlp(self, n, w_up, w_down, side):
        m = self.mlp(n, w_up, w_down)
        extra = None if side is None else side("mlp", n)
        return m if extra is None else m + extra.to(m.dtype)

    def forward_parallel(self, lane0, lane1, x0, w: tuple, rotary: Rotary, backend: str,
                         post: torch.Tensor, resid: torch.Tensor, v_extra=None, docs=None, side=None):
        """Parallel residual lanes (#1530): attention reads lane0 (mixed with x0), the MLP reads
        lane1, both from the block's input; post[s, l] routes output s (0 attention, 1 MLP)
        into lane l, resid[l] scales what lane l keeps."""
        wq, wk, wv, wo, w_up, w_down = w
        dt = lane0.dtype
        mix = self.resid_mix.to(dt)
        a_in = mix[0] * lane0 + mix[1] * x0
        a = self.attn_scale.to(dt) * self.attn(rms_norm(a_in) * self.ln_mult, wq, wk, wv, wo, rotary,
                                               backend, self.xsa, v_extra, docs, side)
        m = self.mlp_scale.to(dt) * self._mlp(rms_norm(lane1) * self.ln_mult, w_up, w_down, side)
        post, resid = post.to(dt), resid.to(dt)
        return (resid[0] * lane0 + post[0, 0] * a + post[1, 0] * m,
                resid[1] * lane1 + post[0, 1] * a + post[1, 1] * m)


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
        self.smear = SmearGate(d) if cfg.smear and cfg.smear_kind == "channel" else None
        self.smear_gate = None
        if cfg.smear and cfg.smear_kind == "input":
            # Names as in #1855's script (smear_gate.weight, smear_lambda).
            self.smear_gate = nn.Linear(cfg.gate_window, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        self.ve_layers = tuple(parse_layers(cfg.ve_layers, L)) if cfg.ve_enabled else ()
        self.ve = ValueEmbedding(cfg.vocab_size, cfg.ve_dim, kv_dim, len(self.ve_layers)) if self.ve_layers else None
        self.blocks = nn.ModuleList(Block(cfg, i, not self.banked) for i in range(L))
        if self.banked:
            self.qo_bank = nn.Parameter(torch.empty(2 * L, d, d))
            self.kv_bank = nn.Parameter(torch.empty(2 * L, kv_dim, d))
            self.mlp_up_bank = nn.Parameter(torch.empty(L, hidden, d))
            self.mlp_down_bank = nn.Parameter(torch.empty(L, d, hidden))
        n_loop = num_loop_mlps(cfg)
        if n_loop and self.banked:
            self.loop_mlp_up_bank = nn.Parameter(torch.empty(n_loop, hidden, d))
            self.loop_mlp_down_bank = nn.Parameter(torch.empty(n_loop, d, hidden))
        elif n_loop:
            self.loop_mlps = nn.ModuleList(MLP(d, hidden, cfg.leaky_slope, True) for _ in range(n_loop))
        # Depth recurrence runs once this is on; a fresh model is in its trained (looping) form
        # and the training loop holds it off until model.loop_enable_at.
        self.looping_active = True
        self.num_encoder = L // 2 if cfg.unet_skips else 0
        num_skips = num_skip_weights(cfg)
        self.num_skips = num_skips
        self.skip_weights = nn.Parameter(torch.ones(num_skips, d)) if num_skips else None
        # sigmoid(0) = 1/2: a gated skip starts as the mean of x and the weighted skip.
        self.skip_gates = nn.Parameter(torch.zeros(num_skips, d)) if num_skips and cfg.skip_gates else None
        self.parallel_start = cfg.parallel_start
        if cfg.parallel_start:
            # One routing per block as #1855 allocates them (only blocks >= parallel_start use
            # theirs); resid 1.1 is its init.
            self.parallel_post_lambdas = nn.Parameter(torch.ones(L, 2, 2))
            self.parallel_resid_lambdas = nn.Parameter(torch.full((L, 2), 1.1))
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(d, cfg.vocab_size, bias=False)
        self.rotary = Rotary(head_dim, cfg.rope_dims, cfg.rope_base, cfg.rope_train_len, cfg.rope_precision)
        self.attn_backend = "sdpa"
        # The fused soft-capped cross-entropy hw.py picked (fn(logits, targets, cap), see
        # use_fused_kernels), or None: the eager loss.
        self.fused_loss = None
        # A seam for transforms applied from outside (late QAT): called as
        # weight_transform(group, w) on "blocks" (block matrices) and "projections"
        # (BigramHash / VE projections); None = weights used as stored.
        self.weight_transform: nn.Module | None = None
        # A seam for side paths added from outside (batched LoRA TTT): called as
        # side_paths(point, slot, x) -> tensor or None, with point q/k/v/o (x = the block's normed
        # attention input), mlp (x = the MLP's normed input) or head (x = the final hidden
        # state, slot 0), slot = the position in the layer schedule; None = no side paths.
        self.side_paths = None
        self.reset_parameters()
        if cfg.init_bf16:
            # #1855 casts its fresh model to bf16 and restores most tensors to fp32: every initial
            # value is then a bf16 number (parallel_resid_lambdas start at 1.1015625, not 1.1).
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(p.to(torch.bfloat16))
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
        if self.smear_gate is not None:
            nn.init.zeros_(self.smear_gate.weight)
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
        ups, downs = self._loop_mlp_params()
        yield from (("up", w) for w in ups)
        yield from (("down", w) for w in downs)

    def _loop_mlp_params(self) -> tuple[list, list]:
        """(up, down) matrices of the untied loop MLPs: bank rows or per-layer weights."""
        if hasattr(self, "loop_mlp_up_bank"):
            return list(self.loop_mlp_up_bank), list(self.loop_mlp_down_bank)
        if hasattr(self, "loop_mlps"):
            return [m.fc.weight for m in self.loop_mlps], [m.proj.weight for m in self.loop_mlps]
        return [], []

    # ---- parameter groups (the optimizer builder reads these) ----
    def matrix_params(self) -> list[nn.Parameter]:
        if self.banked:
            loop = [self.loop_mlp_up_bank, self.loop_mlp_down_bank] if hasattr(self, "loop_mlp_up_bank") else []
            return [self.qo_bank, self.kv_bank, self.mlp_up_bank, self.mlp_down_bank] + loop
        ups, downs = self._loop_mlp_params()
        return [p for b in self.blocks for p in (b.attn.c_q.weight, b.attn.c_k.weight, b.attn.c_v.weight,
                                                 b.attn.proj.weight, b.mlp.fc.weight, b.mlp.proj.weight)
                ] + [p for pair in zip(ups, downs) for p in pair]

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
        """Per-layer weight tuples (q, k, v, out, up, down), transformed once per bank, and the
        (up, down) pairs of the untied loop MLPs."""
        L = self.num_layers
        ws = [self._weight("blocks", w) for w in self.matrix_params()]
        if self.banked:
            qo, kv, up, down = ws[:4]
            loop = list(zip(ws[4], ws[5])) if len(ws) > 4 else []
            return [(qo[i], kv[i], kv[L + i], qo[L + i], up[i], down[i]) for i in range(L)], loop
        return [tuple(ws[6 * i:6 * i + 6]) for i in range(L)], list(zip(ws[6 * L::2], ws[6 * L + 1::2]))

    def side_path_slots(self) -> int:
        """How many schedule slots side_paths is asked about (each pass of a looped block is one)."""
        return len(layer_schedule(self.cfg, self.looping_active))

    # ---- forward ----
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        # Tables may be stored in bf16 (model.embed_dtype); compute stays in fp32 here and
        # autocast decides the matmul precision.
        x = self.tok_emb(ids)
        # model.stream_dtype "embed" keeps the table's dtype: a bf16 table then makes the whole
        # residual stream bf16, as in #1855 (torch 2.9's autocast keeps rms_norm in bf16).
        x = x if self.cfg.stream_dtype == "embed" else at_least_fp32(x)
        if self.bigram is not None:
            x = x + self.bigram(ids, self._weight("projections", self.bigram.proj.weight))
        keep = not_bos_mask(ids, self.cfg.bos_id, x.dtype) if self.cfg.smear_bos_fix else None
        if self.smear_gate is not None:
            x = input_smear(x, self.smear_gate.weight, self.smear_lambda, self.cfg.gate_window, keep)
        x = rms_norm(x)
        return self.smear(x, keep) if self.smear is not None else x

    def _add_skip(self, x: torch.Tensor, j: int, skip: torch.Tensor) -> torch.Tensor:
        s = self.skip_weights[j].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + s
        return torch.lerp(s, x, torch.sigmoid(self.skip_gates[j]).to(x.dtype))

    def _merge_lanes(self, lane0: torch.Tensor, lane1: torch.Tensor) -> torch.Tensor:
        kind = self.cfg.parallel_final
        return lane0 if kind == "attn" else lane1 if kind == "mlp" else 0.5 * (lane0 + lane1)

    def forward_hidden(self, ids: torch.Tensor, starts: torch.Tensor | None = None) -> torch.Tensor:
        """Everything up to and including the final RMSNorm: [B, T, d]. starts [B,T] (bool), when
        given, marks where attention segments begin (else BOS does when model.doc_mask)."""
        x = x0 = self.embed(ids)
        docs = None
        if starts is not None:
            docs = segment_layout(starts, doc_attention_kernel(self.attn_backend))
        elif self.cfg.doc_mask:
            kernel = doc_attention_kernel(self.attn_backend)
            docs = doc_layout(ids, self.cfg.bos_id, kernel, self.cfg.doc_max_len)
        ve = self.ve(ids, self._weight("projections", self.ve.proj.weight)) if self.ve is not None else None
        weights, loop_weights = self._layer_weights()
        schedule = layer_schedule(self.cfg, self.looping_active)
        n_enc = encoder_length(self.cfg, schedule)
        skips: list[torch.Tensor] = []
        lanes = None
        for pos, (i, rep) in enumerate(schedule):
            w = weights[i]
            slot = loop_mlp_slot(self.cfg, i, rep)
            if slot is not None:
                w = w[:4] + loop_weights[slot]
            v_extra = None
            if ve is not None and i in self.ve_layers:
                v_extra = ve * self.ve.layer_scales[self.ve_layers.index(i)].to(ve.dtype)
            j = pos - n_enc
            parallel = self.parallel_start > 0 and j >= 0 and i >= self.parallel_start
            if parallel and lanes is None:
                lanes = (x, x)
            if 0 <= j < self.num_skips and skips:
                # Parallel blocks take the skip on the attention lane only, as #1855 does.
                if lanes is not None:
                    lanes = (self._add_skip(lanes[0], j, skips.pop()), lanes[1])
                else:
                    x = self._add_skip(x, j, skips.pop())
            blk = self.blocks[i]
            hook = self.side_paths
            side = None if hook is None else (lambda p, z, s=pos: hook(p, s, z))
            if parallel:
                lanes = blk.forward_parallel(*lanes, x0, w, self.rotary, self.attn_backend,
                                             self.parallel_post_lambdas[i], self.parallel_resid_lambdas[i],
                                             v_extra, docs, side)
            else:
                x = blk(x, x0, w, self.rotary, self.attn_backend, v_extra, docs, side)
            if pos < n_enc:
                skips.append(x)
        return rms_norm(self._merge_lanes(*lanes) if lanes is not None else x)

    def use_fused_kernels(self, loss_fn, mlp_fn) -> None:
        """Route the training loss and every MLP's up-projection through the kernels hw.py chose
        (pgolf.kernels; None = eager). Training in fp32/bf16 only: float64 twins stay eager."""
        self.fused_loss = loss_fn
        for m in self.modules():
            if isinstance(m, MLP):
                m.fused_up = mlp_fn

    def _head_weight(self) -> torch.Tensor:
        return self._weight("head", self.tok_emb.weight if self.lm_head is None else self.lm_head.weight)

    def compute_logits(self, h: torch.Tensor) -> torch.Tensor:
        w = self._head_weight()
        logits = at_least_fp32(F.linear(h, w.to(h.dtype)))
        extra = None if self.side_paths is None else self.side_paths("head", 0, h)
        if extra is not None:
            logits = logits + at_least_fp32(extra)
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def forward_logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.compute_logits(self.forward_hidden(ids))

    def token_nll(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(ids)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor, starts: torch.Tensor | None = None) -> torch.Tensor:
        h = self.forward_hidden(ids, starts)
        if self.fused_loss is not None and self.side_paths is None and h.dtype != torch.float64:
            # Raw logits in the compute dtype: the kernel caps them and reduces in fp32 itself.
            return self.fused_loss(F.linear(h, self._head_weight().to(h.dtype)), targets, self.cfg.logit_softcap)
        logits = self.compute_logits(h)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
