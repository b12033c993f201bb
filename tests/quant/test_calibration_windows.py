"""quant.calib_windows=shuffled / calib_attention=dense: #1855's calibration draw and forward."""

import sys
from pathlib import Path

import numpy as np
import torch

from pgolf.config import resolve_config
from pgolf.quant.calibration import calibration_tokens, per_layer_model, shuffled_window_starts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _shard_helpers import position_shards  # noqa: E402


def test_shuffled_windows_use_every_window_of_a_phase_grid_once_before_any_repeats():
    lengths, T = [300, 200, 157], 16
    draws = shuffled_window_starts(lengths, T, 200, seed=0)
    assert draws == shuffled_window_starts(lengths, T, 200, seed=0)  # one seeded generator
    assert draws != shuffled_window_starts(lengths, T, 200, seed=1)
    for s in range(3):
        firsts = [a for sh, a in draws[:30] if sh == s]
        assert all(a + T + 1 <= lengths[s] for a in firsts)
        assert len({a % T for a in firsts}) <= 1  # one phase per cut of a shard
    # The first cut holds sum((n - 1 - phase) // T) windows; none repeats before all are used.
    cut = [(sh, a) for sh, a in draws]
    n_first = sum((n - 1 - (min(a for s2, a in cut[:25] if s2 == s) % T)) // T for s, n in enumerate(lengths))
    assert len(set(cut[:n_first])) == n_first
    assert n_first < 200 and len(set(cut)) < len(cut)  # then every shard is cut afresh


def test_shuffled_calibration_reads_every_accum_world_th_shard(tmp_path):
    files = position_shards(tmp_path, [400, 300, 500, 200])
    ends = np.cumsum([400, 300, 500, 200])
    (tmp_path / "sp.model").write_bytes(b"")  # data paths want a tokenizer beside the shards; never read here
    cfg = resolve_config("smoke", env={}, sets=[
        f"data.path={tmp_path}", "data.train_pattern=fineweb_train_*.bin", "model.vocab_size=2048",
        "run.accum_world=2", "run.train_batch_tokens=128", "run.train_seq_len=16",
        "quant.calib_windows=shuffled", "quant.calib_batches=3"])[0]
    assert len(files) == 4
    toks = calibration_tokens(cfg, None, "cpu")
    assert toks.shape == (3 * (128 // 2 // 16), 16)
    for row in toks.tolist():
        assert row == list(range(row[0], row[0] + 16))  # one contiguous window of a shard
        shard = int(np.searchsorted(ends, row[0], side="right"))
        assert shard in (0, 2) and row[-1] < ends[shard]  # rank 0's shards: 0 and 2
    first = calibration_tokens(resolve_config("smoke", env={}, sets=[
        f"data.path={tmp_path}", "data.train_pattern=fineweb_train_*.bin", "model.vocab_size=2048",
        "run.train_seq_len=16", "quant.calib_seqs=4"])[0], None, "cpu")
    assert first[:, 0].tolist() == [0, 16, 32, 48]  # the default: the stream's first tokens


def test_dense_calibration_attends_across_documents():
    sets = ["model.num_layers=1", "model.model_dim=32", "model.num_heads=2", "model.num_kv_heads=1",
            "model.doc_mask=true"]
    cfg = resolve_config("smoke", env={}, sets=sets)[0]
    dense = resolve_config("smoke", env={}, sets=[*sets, "quant.calib_attention=dense"])[0]
    from pgolf.model.gpt import GPT
    flat = GPT(cfg.model, banked=False).state_dict()
    assert per_layer_model(cfg, flat, "cpu").cfg.doc_mask is True
    assert per_layer_model(dense, flat, "cpu").cfg.doc_mask is False
    assert torch.is_tensor(next(iter(flat.values())))
