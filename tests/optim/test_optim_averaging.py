"""EMA / SWA arithmetic on hand values and export selection."""

import pytest
import torch

from pgolf.optim.averaging import EMA, SWA, select_export_state
from pgolf.optim.errors import OptimError


class _Tiny(torch.nn.Module):
    def __init__(self, tie: bool = True, dtype=torch.float32) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(2, 2).to(dtype)
        self.w = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=dtype))
        self.head = torch.nn.Linear(2, 2, bias=False).to(dtype)
        if tie:
            self.head.weight = self.emb.weight
        self.register_buffer("table", torch.tensor([7.0]))
        self.register_buffer("steps", torch.tensor([3]))

    def set_all(self, value: float) -> None:
        with torch.no_grad():
            for p in self.parameters():
                p.fill_(value)


def test_ema_hand_values():
    m = _Tiny()
    ema = EMA(m, decay=0.9)
    with torch.no_grad():
        m.w.copy_(torch.tensor([3.0, 4.0]))
    ema.update(m)
    assert torch.allclose(ema.shadow["w"], torch.tensor([1.2, 2.2]))
    ema.update(m)
    assert torch.allclose(ema.shadow["w"], torch.tensor([1.38, 2.38]))
    assert ema.num_updates == 2
    assert "head.weight" not in ema.shadow  # tied alias tracked once, via emb.weight


def test_ema_bf16_model_keeps_fp32_shadow_and_exports_model_dtype():
    m = _Tiny(dtype=torch.bfloat16)
    ema = EMA(m, decay=0.5)
    m.set_all(3.0)
    ema.update(m)
    assert ema.shadow["w"].dtype == torch.float32
    assert torch.allclose(ema.shadow["w"], torch.tensor([2.0, 2.5]))
    state = ema.averaged_state(m)
    assert state["w"].dtype == torch.bfloat16
    assert torch.equal(state["head.weight"], state["emb.weight"])  # alias gets the average
    assert torch.equal(state["table"], torch.tensor([7.0]))  # buffers come from the model
    ema.copy_to(m)
    assert torch.allclose(m.w.float(), torch.tensor([2.0, 2.5]))


def test_ema_state_dict_roundtrip():
    m = _Tiny()
    ema = EMA(m, decay=0.9)
    m.set_all(5.0)
    ema.update(m)
    other = EMA(_Tiny(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.num_updates == 1
    assert torch.equal(other.shadow["w"], ema.shadow["w"])
    with pytest.raises(OptimError):
        EMA(torch.nn.Linear(2, 2), 0.9).load_state_dict(ema.state_dict())


def test_swa_running_mean_and_trigger():
    m = _Tiny()
    swa = SWA()
    assert not swa.maybe_snapshot(m, step=50, lr_mult=0.5, every=50, threshold=0.2)  # lr too high
    for value, step in [(1.0, 100), (2.0, 150), (6.0, 200)]:
        m.set_all(value)
        assert not swa.maybe_snapshot(m, step=step + 1, lr_mult=0.1, every=50, threshold=0.2)
        assert swa.maybe_snapshot(m, step=step, lr_mult=0.1, every=50, threshold=0.2)
    assert swa.count == 3
    assert torch.allclose(swa.averaged_state()["w"], torch.tensor([3.0, 3.0]))
    restored = SWA()
    restored.load_state_dict(swa.state_dict())
    assert restored.count == 3 and torch.equal(restored.mean["w"], swa.mean["w"])
    with pytest.raises(OptimError):
        swa.maybe_snapshot(m, 0, 0.0, every=0, threshold=0.2)


def test_swa_over_ema_snapshots():
    m = _Tiny()
    ema = EMA(m, decay=0.5)
    swa = SWA(source="ema")
    m.set_all(3.0)
    ema.update(m)  # w: [2.0, 2.5]
    swa.add_snapshot(ema.shadow)
    ema.update(m)  # w: [2.5, 2.75]
    swa.add_snapshot(ema.shadow)
    assert torch.allclose(swa.mean["w"], torch.tensor([2.25, 2.625]))


def test_select_export_state_modes():
    m = _Tiny()
    ema = EMA(m, decay=0.5)
    m.set_all(3.0)
    ema.update(m)
    swa = SWA()
    state, label, warn = select_export_state("auto", m, ema, swa)
    assert (label, warn) == ("ema", "") and torch.allclose(state["w"], torch.tensor([2.0, 2.5]))
    state, label, _ = select_export_state("auto", m, None, None)
    assert label == "raw" and torch.allclose(state["w"], torch.tensor([3.0, 3.0]))
    state, label, warn = select_export_state("swa", m, ema, swa)
    assert label == "raw" and "no SWA snapshots" in warn
    state, label, warn = select_export_state("ema_swa", m, ema, None)
    assert label == "ema" and "no SWA snapshots" in warn
    swa.add_snapshot(m)
    m.set_all(5.0)
    swa.add_snapshot(m)
    state, label, warn = select_export_state("swa", m, ema, swa)
    assert (label, warn) == ("swa", "") and torch.allclose(state["w"], torch.tensor([4.0, 4.0]))
    assert set(state) == set(m.state_dict())
    state, label, warn = select_export_state("ema", m, None, swa)
    assert label == "raw" and "no EMA" in warn
    with pytest.raises(OptimError, match="source"):
        select_export_state("ema_swa", m, ema, swa)  # this SWA averaged raw weights
    with pytest.raises(OptimError, match="export_weights"):
        select_export_state("best", m, ema, swa)
    state["w"].fill_(0.0)
    assert torch.equal(m.w.detach(), torch.tensor([5.0, 5.0]))  # exports are copies
