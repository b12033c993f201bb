"""build_optimizers / OptimizerSet: groups, lrs, clipping order, resume."""

import io
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _optim_helpers import FakeModel, TwinComm, batch_for_step  # noqa: E402

from pgolf.config_tree import OptimConfig  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.optim.builder import build_optimizers  # noqa: E402
from pgolf.optim.errors import OptimError  # noqa: E402
from pgolf.optim.schedule import lr_multiplier, muon_momentum_at  # noqa: E402

_OCFG = OptimConfig(matrix_lr=0.03, scalar_lr=0.02, tied_embed_lr=0.05, embed_lr=0.6, head_lr=0.008,
                    muon_momentum=0.9, muon_wd=0.04, adam_wd=0.01, beta1=0.8, beta2=0.9,
                    adam_eps=1e-7)


def test_groups_and_lrs_tied():
    model = FakeModel()
    opts = build_optimizers(model, _OCFG, Comm())
    mg = opts.muon.param_groups[0]
    assert mg["params"] == [model.bank, model.up]
    assert (mg["lr"], mg["base_lr"], mg["momentum"], mg["weight_decay"]) == (0.03, 0.03, 0.9, 0.04)
    groups = opts.adam.param_groups
    assert [g["params"] for g in groups] == [[model.tok_emb.weight], [model.gain]]
    assert [g["base_lr"] for g in groups] == [0.05, 0.02]
    assert groups[0]["betas"] == (0.8, 0.9) and groups[0]["eps"] == 1e-7
    assert groups[0]["weight_decay"] == 0.01 and not groups[0]["fused"]
    opts.set_lr_multiplier(0.5)
    opts.set_muon_momentum(0.97)
    assert [g["lr"] for g in groups] == [0.025, 0.01] and mg["lr"] == 0.015
    assert mg["momentum"] == 0.97


def test_groups_untied_head():
    model = FakeModel(tie=False)
    opts = build_optimizers(model, _OCFG, Comm())
    groups = opts.adam.param_groups
    assert [g["base_lr"] for g in groups] == [0.6, 0.02, 0.008]
    assert groups[2]["params"] == [model.lm_head.weight]


def _record_clipping(opts):
    seen = {}
    launch, adam_step = opts.muon.launch_reduce_scatter, opts.adam.step

    def spy_launch():
        seen["muon"] = torch.norm(torch.stack([p.grad.norm() for p in opts.muon_params]))
        launch()

    def spy_adam(*a, **k):
        seen["other"] = torch.norm(torch.stack([p.grad.norm() for p in opts.other_params]))
        return adam_step(*a, **k)

    opts.muon.launch_reduce_scatter, opts.adam.step = spy_launch, spy_adam
    return seen


@pytest.mark.parametrize("mode", ["local", "global"])
def test_clip_modes(mode):
    model = FakeModel()
    opts = build_optimizers(model, _OCFG, Comm())
    ids, tgt = batch_for_step(0)
    model(ids, tgt).backward()
    raw_muon = torch.norm(torch.stack([p.grad.norm() for p in opts.muon_params]))
    raw_other = torch.norm(torch.stack([p.grad.norm() for p in opts.other_params]))
    clip = 0.05
    assert raw_muon > 2 * clip and raw_other > 2 * clip
    seen = _record_clipping(opts)
    opts.reduce_and_step(model, clip, mode)
    if mode == "local":  # one norm over every param, before any reduction
        assert torch.hypot(seen["muon"], seen["other"]) == pytest.approx(clip, rel=1e-4)
    else:  # only the reduced non-Muon grads are clipped
        assert seen["muon"] == pytest.approx(raw_muon.item(), rel=1e-6)
        assert seen["other"] == pytest.approx(clip, rel=1e-4)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(OptimError, match="grad_clip_mode"):
        opts.reduce_and_step(model, clip, "after")


def _train(model, opts, steps):
    for step in steps:
        ids, tgt = batch_for_step(step)
        model(ids, tgt).backward()
        opts.set_lr_multiplier(lr_multiplier(step, 0.0, 6, 3, 0.0, "iters"))
        opts.set_muon_momentum(muon_momentum_at(step, 0.85, 0.95, 4))
        opts.reduce_and_step(model, 1.0, "local")


def test_resume_is_bit_identical():
    straight = FakeModel(seed=1)
    _train(straight, build_optimizers(straight, _OCFG, Comm()), range(6))

    first = FakeModel(seed=1)
    opts = build_optimizers(first, _OCFG, Comm())
    _train(first, opts, range(3))
    blob = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opts.state_dict()}, blob)
    ckpt = torch.load(io.BytesIO(blob.getvalue()))

    resumed = FakeModel(seed=99)
    resumed.load_state_dict(ckpt["model"])
    ropts = build_optimizers(resumed, _OCFG, Comm())
    ropts.load_state_dict(ckpt["opt"])
    _train(resumed, ropts, range(3, 6))
    moved = False
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
        moved |= not torch.equal(a, ckpt["model"][name])
    assert moved
    # Without the optimizer state the continuation differs (the test can fail).
    cold = FakeModel(seed=99)
    cold.load_state_dict(ckpt["model"])
    _train(cold, build_optimizers(cold, _OCFG, Comm()), range(3, 6))
    assert not torch.equal(cold.bank, straight.bank)


def test_flat_all_reduce_reuses_one_buffer_and_copies_back():
    """World 2: non-Muon grads are averaged through one persistent flat buffer per dtype."""
    model = FakeModel()
    comm = TwinComm()
    opts = build_optimizers(model, _OCFG, comm)
    seen, adam_step = [], opts.adam.step

    def spy_adam(*a, **k):
        seen.append([p.grad.clone() for p in opts.other_params])
        return adam_step(*a, **k)

    opts.adam.step = spy_adam
    for step in range(3):
        ids, tgt = batch_for_step(step)
        model(ids, tgt).backward()
        if step == 1:
            model.gain.grad = None  # travels as zeros
        raw = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in opts.other_params]
        opts.reduce_and_step(model, 0.0)
        # The twin sent grad + 2, so the mean is grad + 1.
        assert all(torch.equal(got, r + 1) for got, r in zip(seen[-1], raw))
    flat = [c for c in comm.storage() if c[0] == "all_reduce"]
    assert len(flat) == 3 and flat[0] == flat[1] == flat[2]
