"""Input-side parts of the record model: BigramHash, SmearGate and value embeddings."""

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.hw import at_least_fp32


def bigram_buckets(ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """bucket(t_i, t_{i-1}) = (36313*t_i XOR 27191*t_{i-1}) mod (B-1); position 0 -> B-1."""
    t = ids.to(torch.int64)
    h = torch.bitwise_xor(36313 * t[..., 1:], 27191 * t[..., :-1]) % (buckets - 1)
    first = torch.full_like(t[..., :1], buckets - 1)
    return torch.cat((first, h), dim=-1)


class BigramHash(nn.Module):
    """Hashed embedding of (previous, current) token pairs, projected to the model width."""

    def __init__(self, buckets: int, dim: int, model_dim: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, dim)
        self.proj = nn.Linear(dim, model_dim, bias=False)
        self.scale = nn.Parameter(torch.tensor(0.05))

    def reset_parameters(self) -> None:
        # The table starts at zero so the model begins as a plain unigram embedding; the
        # projection must then be non-zero or neither would ever receive a gradient.
        nn.init.zeros_(self.embed.weight)
        nn.init.orthogonal_(self.proj.weight)

    def forward(self, ids: torch.Tensor, proj_weight: torch.Tensor | None = None) -> torch.Tensor:
        """proj_weight: the projection as the caller wants it seen (e.g. fake-quantized)."""
        e = at_least_fp32(self.embed(bigram_buckets(ids, self.buckets)))
        w = self.proj.weight if proj_weight is None else proj_weight
        return self.scale.to(e.dtype) * F.linear(e, w.to(e.dtype))


def not_bos_mask(ids: torch.Tensor, bos_id: int, dtype: torch.dtype) -> torch.Tensor:
    """[B,T,1]: 0 where the token is BOS (a document starts), else 1."""
    return (ids != bos_id).to(dtype).unsqueeze(-1)


class SmearGate(nn.Module):
    """x_t <- (1 - g) * x_t + g * x_{t-1}, g = sigmoid(per-channel gate)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """keep [B,T,1]: 0 where x_{t-1} must not leak in (the BOS fix); None = smear everywhere."""
        g = torch.sigmoid(self.gate).to(x.dtype)
        prev = F.pad(x[:, :-1], (0, 0, 1, 0))
        step = g * (prev - x)
        return x + (step if keep is None else step * keep)


def input_smear(x: torch.Tensor, gate_w: torch.Tensor, lam: torch.Tensor, window: int,
                keep: torch.Tensor | None = None) -> torch.Tensor:
    """Input-dependent SmearGate (#1667, modded-nanogpt): x_t += lam * sigmoid(W x_t[:window]) *
    x_{t-1}; lam and W start at 0, so it begins as the identity. keep as in SmearGate."""
    g = lam.to(x.dtype) * torch.sigmoid(F.linear(x[:, 1:, :window], gate_w.to(x.dtype)))
    prev = x[:, :-1] if keep is None else x[:, :-1] * keep[:, 1:]
    return torch.cat((x[:, :1], x[:, 1:] + g * prev), dim=1)


class ValueEmbedding(nn.Module):
    """A shared token table projected to the KV width, added to V on chosen layers."""

    def __init__(self, vocab: int, dim: int, kv_dim: int, num_layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, kv_dim, bias=False)
        self.scale = nn.Parameter(torch.tensor(0.1))
        self.layer_scales = nn.Parameter(torch.ones(num_layers))

    def reset_parameters(self, std: float) -> None:
        nn.init.normal_(self.embed.weight, std=std)
        nn.init.orthogonal_(self.proj.weight)

    def forward(self, ids: torch.Tensor, proj_weight: torch.Tensor | None = None) -> torch.Tensor:
        e = at_least_fp32(self.embed(ids))
        w = self.proj.weight if proj_weight is None else proj_weight
        return self.scale.to(e.dtype) * F.linear(e, w.to(e.dtype))
