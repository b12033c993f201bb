"""Bytes in and out of the GPU: the artifact of a CUDA model, and pinned-memory batches."""

import numpy as np
import pytest
import torch
from _gpu_helpers import SMALL_RECORD, filled_model, record_cfg

from pgolf.data.loader import DistributedTokenLoader
from pgolf.data.shards import write_shard
from pgolf.model.banks import unbank_state_dict
from pgolf.model.build import model_from_state
from pgolf.quant.artifact import pack_artifact, read_artifact, unpack_artifact, write_artifact

pytestmark = pytest.mark.gpu


def test_artifact_round_trip_of_a_cuda_model_equals_cpu(dev, tmp_path, report):
    cfg = record_cfg(*SMALL_RECORD)
    model = filled_model(cfg, dev, sigma=0.3)
    flat_dev = unbank_state_dict({k: v.detach() for k, v in model.state_dict().items()}, model.num_layers)
    flat_cpu = {k: v.cpu() for k, v in flat_dev.items()}
    blob_dev = pack_artifact(flat_dev, cfg.quant, "hash")
    blob_cpu = pack_artifact(flat_cpu, cfg.quant, "hash")
    sd_dev, _ = unpack_artifact(blob_dev)
    sd_cpu, _ = unpack_artifact(blob_cpu)
    path = write_artifact(tmp_path / "model.ptz", blob_dev)
    on_dev = model_from_state(cfg, read_artifact(path)[0], dev).state_dict()
    on_cpu = model_from_state(cfg, sd_cpu, torch.device("cpu")).state_dict()
    report.record("artifact_round_trip", {"bytes": len(blob_dev), "identical_bytes": blob_dev == blob_cpu,
                                          "tensors": len(sd_dev)})
    # Quantization runs on host copies, so the device the weights came from must not matter:
    # the same bytes, the same de-quantized tensors, the same loaded model (exact).
    assert blob_dev == blob_cpu
    assert sd_dev.keys() == sd_cpu.keys() and all(torch.equal(sd_dev[k], sd_cpu[k]) for k in sd_cpu)
    assert all(v.device.type == dev.type for v in on_dev.values())
    assert on_dev.keys() == on_cpu.keys() and all(torch.equal(on_dev[k].cpu(), on_cpu[k]) for k in on_cpu)


def test_pinned_loader_batches_equal_cpu_batches(dev, tmp_path, report):
    rng = np.random.default_rng(0)
    for i, n in enumerate((5000, 3001)):  # a shard boundary inside a batch, then a wrap-around
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", rng.integers(0, 1024, n))
    pattern = str(tmp_path / "fineweb_train_*.bin")
    batches = 0
    for rank, world in ((0, 1), (1, 2)):
        cpu = DistributedTokenLoader(pattern, rank, world, "cpu")
        gpu = DistributedTokenLoader(pattern, rank, world, dev)
        # Keep every device batch alive until the end: a staging buffer reused while its copy
        # is still in flight would corrupt an earlier batch, not the current one.
        got, want = [], []
        for step in range(12):
            seq_len, accum = (128, 2) if step % 3 else (64, 1)
            want.append(cpu.next_batch(1024 * world, seq_len, accum))
            got.append(gpu.next_batch(1024 * world, seq_len, accum))
        for (x, y), (xr, yr) in zip(got, want):
            assert x.device.type == dev.type and x.dtype == xr.dtype == torch.int64
            assert torch.equal(x.cpu(), xr) and torch.equal(y.cpu(), yr)
            batches += 1
        assert gpu.state() == cpu.state()
    report.record("pinned_loader", {"batches_compared": batches})
