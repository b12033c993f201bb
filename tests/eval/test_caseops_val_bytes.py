"""record_1855's validation set on the shared CaseOps data: the tokens it keeps and the sidecar
bytes its plain eval charges (facts of ../shared/data/README.md: with seq_len 2048 the record
keeps the first 624,641 val tokens, whose targets carry 1,915,175 sidecar bytes)."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.config import resolve_config
from pgolf.data.paths import load_val
from pgolf.data.sidecar import SidecarBytes
from pgolf.dist import Comm
from pgolf.eval.bpb import eval_plain
from pgolf.eval.final import plain_whole_batch_windows

CASEOPS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "datasets" / "fineweb_legal_sp8192_caseops"
KEPT_TOKENS = 624_641
KEPT_TARGET_BYTES = 1_915_175


def shard(name: str) -> np.ndarray:
    return np.fromfile(CASEOPS / name, dtype="<u2", offset=256 * 4).astype(np.int64)


class ZeroNLL(torch.nn.Module):
    """Scores nothing but lets eval_plain walk its windows and charge their bytes."""

    def token_nll(self, x, y):
        return torch.zeros(y.shape)


class RankComm(Comm):
    """One rank of a world whose collectives the test sums by hand."""

    def __init__(self, rank: int, world: int):
        super().__init__()
        self.rank, self.world_size = rank, world


@pytest.fixture(scope="module")
def record_val():
    if not (CASEOPS / "fineweb_val_bytes_000000.bin").is_file():
        pytest.skip(f"shared CaseOps data absent: {CASEOPS.resolve()} (expected ../shared beside the checkout)")
    cfg, _ = resolve_config("record_1855", None, {}, [f"data.path={CASEOPS}"])
    return cfg, load_val(cfg, torch.device("cpu"))


def test_record_1855_keeps_the_records_tokens_and_bytes(record_val):
    cfg, val = record_val
    assert cfg.eval.seq_len == 2048
    assert val.tokens.numel() == KEPT_TOKENS
    assert np.array_equal(val.tokens.numpy(), shard("fineweb_val_000000.bin")[:KEPT_TOKENS])
    assert val.tables.total() == KEPT_TARGET_BYTES


def test_plain_eval_charges_every_kept_targets_bytes(record_val):
    cfg, val = record_val
    cfg = copy.deepcopy(cfg)
    cfg.eval.plain_whole_batches = False
    out = eval_plain(ZeroNLL(), val.tokens, cfg.eval.seq_len, cfg.eval.batch_tokens, val.tables, Comm(),
                     torch.device("cpu"), whole_batch_windows=plain_whole_batch_windows(cfg))
    assert (out["tokens"], out["bytes"]) == (KEPT_TOKENS - 1, KEPT_TARGET_BYTES)


@pytest.mark.parametrize("world", [1, 8])
def test_record_plain_eval_scores_whole_32_window_batches_per_rank(record_val, world):
    # 524,288 batch tokens over 8 micro-batches of 2,048-token windows: 32 windows per batch;
    # the 305 windows give each rank floor(share / 32) * 32 of its own.
    cfg, val = record_val
    assert cfg.eval.plain_whole_batches and plain_whole_batch_windows(cfg) == 32
    counts = shard("fineweb_val_bytes_000000.bin")
    tokens = charged = expected = 0
    for rank in range(world):
        out = eval_plain(ZeroNLL(), val.tokens, 2048, cfg.eval.batch_tokens, val.tables, RankComm(rank, world),
                         torch.device("cpu"), whole_batch_windows=32)
        lo = 305 * rank // world
        kept = (305 * (rank + 1) // world - lo) // 32 * 32
        tokens, charged = tokens + out["tokens"], charged + out["bytes"]
        expected += int(counts[lo * 2048 + 1:(lo + kept) * 2048 + 1].sum())
    assert tokens == {1: 288, 8: 256}[world] * 2048
    assert charged == expected < KEPT_TARGET_BYTES


@pytest.mark.parametrize("whole,scored", [(3, 3), (4, 4), (5, 4), (0, 4)])
def test_whole_batches_drop_the_partial_one_unless_nothing_would_be_left(whole, scored):
    tokens = torch.arange(4 * 16 + 1) % 7 + 1
    tables = SidecarBytes(torch.ones(tokens.numel(), dtype=torch.int64), 8)
    out = eval_plain(ZeroNLL(), tokens, 16, 64, tables, Comm(), torch.device("cpu"), whole_batch_windows=whole)
    assert out["tokens"] == out["bytes"] == scored * 16
