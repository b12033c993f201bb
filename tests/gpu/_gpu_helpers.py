"""Shared pieces of the CUDA checks: configs, filled models, synthetic data (no CUDA at import)."""

import os
import random
from pathlib import Path

import numpy as np
import torch

from pgolf.bench import bench_fill_weights
from pgolf.config import resolve_config
from pgolf.model.build import build_model

ON_CPU = os.environ.get("PGOLF_GPU_TESTS_ON_CPU") == "1"
REPORT_FILE = "gpu_tests_report.json"

# A record_1128-architecture model small enough for CPU logic checks and quick GPU compiles:
# every record part stays on (banks, BigramHash, SmearGate, XSA, VE, U-Net skips, partial RoPE).
SMALL_RECORD = ["model.num_layers=4", "model.model_dim=128", "model.num_heads=4", "model.num_kv_heads=2",
                "model.bigram_dim=32", "model.ve_dim=32", "model.xsa_last_n=2", "model.ve_layers=-2,-1",
                "model.bigram_vocab_size=256"]
TINY_RECORD = ["model.num_layers=2", "model.model_dim=64", "model.num_heads=4", "model.num_kv_heads=2",
               "model.bigram_dim=16", "model.ve_dim=16", "model.xsa_last_n=1", "model.ve_layers=-1",
               "model.bigram_vocab_size=128"]


def record_cfg(*sets: str):
    """record_1128 with overrides; env vars ignored so a stray NUM_LAYERS cannot change a check."""
    cfg, _ = resolve_config("record_1128", None, {}, list(sets))
    return cfg


def filled_model(cfg, device, sigma: float, seed: int = 0):
    """build_model on `device` with every weight drawn by bench_fill_weights (seeded, CPU RNG):
    the init's zero output projections would leave attention and MLP out of the numbers."""
    torch.manual_seed(seed)
    model = build_model(cfg, torch.device("cpu"))
    bench_fill_weights(model, sigma=sigma, emb_std=0.05, seed=seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = build_model(cfg, device)
    out.load_state_dict(state)
    return out


class SyntheticTokens:
    """Loader stand-in: the same uniform random batches on any device (drawn on the CPU)."""

    def __init__(self, vocab: int, seqs: int, seq_len: int, device, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.vocab, self.seqs, self.seq_len, self.device = vocab, seqs, seq_len, device

    def batch(self):
        ids = torch.randint(0, self.vocab, (self.seqs, self.seq_len + 1), generator=self.gen)
        return ids[:, :-1].to(self.device), ids[:, 1:].to(self.device)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int):
        assert global_tokens == self.seqs * seq_len * grad_accum_steps and seq_len == self.seq_len
        return self.batch()


def synthetic_documents(n_docs: int, seed: int = 0) -> list[str]:
    """English-like text from a fixed random lexicon with a Zipf law: enough distinct
    substrings for a BPE vocabulary, and word statistics a tiny model can learn."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = [12, 9, 8, 7.5, 7, 6.7, 6.3, 6, 5.9, 4.2, 4, 2.8, 2.8, 2.4, 2.2, 2, 2, 1.9, 1, 1, 1, .8, .2, .1, .1, .1]
    lexicon = sorted({"".join(rng.choices(letters, weights, k=rng.randint(1, 9))) for _ in range(3000)})
    zipf = [1.0 / (r + 1) for r in range(len(lexicon))]
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(3, 12)):
            words = rng.choices(lexicon, zipf, k=rng.randint(4, 18))
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?", ","]))
        docs.append(" ".join(sentences))
    return docs


def make_dataset(folder: Path, vocab: int = 512, n_train_docs: int = 1500, n_val_docs: int = 150) -> dict:
    """A tokenizer trained on synthetic text plus official train/val shards (BOS + ids per
    document, as the challenge's data): the GPU machine has no embedded-corpus package."""
    import sentencepiece

    from pgolf.data.corpus import train_corpus_tokenizer
    from pgolf.data.shards import write_shard

    folder.mkdir(parents=True, exist_ok=True)
    docs = synthetic_documents(n_train_docs + n_val_docs)
    model_bytes = train_corpus_tokenizer(docs[:n_train_docs], vocab_size=vocab)
    tok = folder / f"synthetic_{vocab}_bpe.model"
    tok.write_bytes(model_bytes)
    sp = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)

    def encode(texts):
        return np.concatenate([np.asarray([1] + sp.encode(t), dtype=np.int64) for t in texts])

    train = encode(docs[:n_train_docs])
    half = len(train) // 2
    write_shard(folder / "fineweb_train_000000.bin", train[:half])
    write_shard(folder / "fineweb_train_000001.bin", train[half:])
    write_shard(folder / "fineweb_val_000000.bin", encode(docs[n_train_docs:]))
    return {"data_path": str(folder), "tokenizer_path": str(tok), "vocab": vocab, "train_tokens": len(train)}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
