"""Causal SLOT variants: document masks, carried state reset at BOS, score before
update, and the legality audit (flip-one-target, scored once, normalization) for each."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import TinyCausalLM, make_tables, make_tokens  # noqa: E402

from pgolf.config import ConfigError, finalize_config  # noqa: E402
from pgolf.config_tree import Config, EvalConfig
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import ScoreRecorder  # noqa: E402
from pgolf.eval.legality import audit  # noqa: E402
from pgolf.eval.runner import EvalMode, evaluate  # noqa: E402
from pgolf.eval.sliding import eval_sliding, plan_windows  # noqa: E402
from pgolf.eval.slot import SlotScorer  # noqa: E402
from pgolf.eval.slot_state import slot_doc_masks  # noqa: E402

CPU = torch.device("cpu")
BOS = 1
VARIANTS = ["causal-slot", "causal-slot-carry", "causal-slot-bias", "causal-slot-carry-bias"]


def _doc_tokens(n: int, every: int = 37) -> torch.Tensor:
    """make_tokens with a BOS every `every` tokens, so documents end inside windows."""
    t = make_tokens(n)
    t[::every] = BOS
    return t


def _batch(tokens: torch.Tensor, windows: list):
    """x, y, lo, hi of consecutive windows as score_windows builds them."""
    wl = 16
    x = torch.stack([tokens[s:s + wl] for s, _, _ in windows])
    y = torch.stack([tokens[s + 1:s + wl + 1] for s, _, _ in windows])
    lo = torch.tensor([a - s for s, a, _ in windows])
    hi = torch.tensor([b - s for s, _, b in windows])
    return x, y, lo, hi


def _scorer(**kw) -> SlotScorer:
    base = dict(lr=0.05, steps=3, bias_lr=0.05, carry_steps=2, bos_id=BOS)
    base.update(kw)
    return SlotScorer("causal", **base)


def _sliding(scorer, tokens, batch_seqs=4):
    n = tokens.numel() - 1
    rec = ScoreRecorder(n)
    out = eval_sliding(TinyCausalLM(), tokens, 16, 4, batch_seqs, make_tables(), Comm(), CPU,
                       scorer=scorer, recorder=rec)
    return out, rec.nll_array()


def test_doc_masks_split_at_bos():
    x = torch.tensor([[5, 6, 1, 7, 8, 9, 1, 4]])
    fit, apply = slot_doc_masks(x, torch.tensor([4]), BOS)
    # Target p is predicted after input p: the document of target 4 starts at input 2.
    assert apply.tolist() == [[False, False, True, True, True, True, False, False]]
    assert fit.tolist() == [[False, False, True, True, False, False, False, False]]
    fit, apply = slot_doc_masks(x, torch.tensor([4]), -1)
    assert bool(apply.all()) and fit.tolist() == [[True] * 4 + [False] * 4]


@pytest.mark.parametrize("bos_at_lo", [True, False])
def test_carried_state_resets_at_bos(bos_at_lo):
    tokens = make_tokens(120)
    windows = plan_windows(120, 16, 4)
    first, second = windows[1:5], windows[5:9]
    if bos_at_lo:
        tokens[second[0][1]] = BOS  # the input of the second batch's first scored target
    model = TinyCausalLM()
    carried = _scorer(carry=True, bias=True)
    carried(model, *_batch(tokens, first))
    got = carried(model, *_batch(tokens, second))
    fresh = _scorer(carry=True, bias=True)(model, *_batch(tokens, second))
    lo, hi = second[0][1] - second[0][0], second[0][2] - second[0][0]
    same = np.allclose(got[0, lo:hi].numpy(), fresh[0, lo:hi].numpy(), atol=1e-6)
    assert same is bos_at_lo


def test_carry_does_not_link_a_batch_that_skips_ahead():
    tokens = make_tokens(200)
    windows = plan_windows(200, 16, 4)
    model = TinyCausalLM()
    carried = _scorer(carry=True)
    carried(model, *_batch(tokens, windows[1:5]))
    later = windows[20:24]  # not contiguous: the state must not be applied
    np.testing.assert_allclose(carried(model, *_batch(tokens, later)).numpy(),
                               _scorer(carry=True)(model, *_batch(tokens, later)).numpy(), atol=1e-6)


def test_zero_steps_equal_plain_sliding():
    tokens = _doc_tokens(120)
    _, plain = _sliding(None, tokens)
    _, slot = _sliding(_scorer(carry=True, bias=True, steps=0, carry_steps=0), tokens)
    np.testing.assert_allclose(slot, plain, atol=1e-5)


def test_bias_batched_equals_window_by_window():
    tokens = _doc_tokens(120)
    _, one = _sliding(_scorer(bias=True), tokens, batch_seqs=1)
    _, many = _sliding(_scorer(bias=True), tokens, batch_seqs=5)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_variants_adapt_and_lower_the_loss():
    tokens = make_tokens(400)
    plain, _ = _sliding(None, tokens)
    for kw in (dict(), dict(bias=True), dict(carry=True), dict(carry=True, bias=True)):
        out, _ = _sliding(_scorer(**kw), tokens)
        assert out["val_loss"] < plain["val_loss"] - 1e-3, kw


@pytest.mark.parametrize("mode", VARIANTS + ["ttt+" + v for v in VARIANTS])
def test_each_variant_passes_the_audit(mode):
    ecfg = EvalConfig(seq_len=16, stride=4, batch_seqs=4, ttt_chunk_tokens=48, ttt_batch_seqs=2,
                      ttt_epochs=1, slot_steps=3, slot_lr=0.05, slot_bias_lr=0.05, audit_tokens=160)
    rep = audit(TinyCausalLM(), _doc_tokens(200), mode, ecfg, make_tables(), CPU,
                normalization=not mode.startswith("ttt"))
    assert rep.ok and rep.causality == "PASS" and rep.once == "PASS", rep.summary()
    assert rep.score_before_update == ("PASS" if mode.startswith("ttt") else "n/a")


class LeakyCarry(SlotScorer):
    """Negative control: scores a batch with the carried state already refitted on it."""

    def __call__(self, model, x, y, lo, hi):
        with torch.no_grad():
            h = model.forward_hidden(x)
        self.fit_causal(model, h, x, y, lo, hi)
        with torch.no_grad():
            logits = model.compute_logits(h + self.carry.delta) + self.carry.bias
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                                     reduction="none").view(y.shape)


def test_audit_catches_a_carry_updated_before_scoring():
    ecfg = EvalConfig(seq_len=16, stride=4, batch_seqs=4, slot_mode="causal", audit_tokens=160)

    def eval_fn(t, cfg, rec, ev):
        scorer = LeakyCarry("causal", lr=0.05, steps=3, bias=True, bias_lr=0.1, carry=True,
                            carry_steps=3, bos_id=-1)
        return eval_sliding(TinyCausalLM(), t, cfg.seq_len, cfg.stride, cfg.batch_seqs, make_tables(),
                            Comm(), CPU, scorer=scorer, recorder=rec, events=ev)
    rep = audit(None, make_tokens(200), "causal-slot", ecfg, make_tables(), CPU, eval_fn=eval_fn,
                vocab_size=32, normalization=False)
    assert rep.causality == "FAIL"


def test_mode_names_select_the_variants():
    src = EvalConfig(seq_len=16, slot_carry=True)
    for mode in VARIANTS:
        for prefix in ("", "ttt+"):
            cfg = EvalMode.parse(prefix + mode).eval_config(src)
            assert cfg.slot_mode == "causal" and cfg.ttt_enabled is bool(prefix)
            assert cfg.slot_carry is ("carry" in mode) and cfg.slot_bias is ("bias" in mode)
            name = EvalMode.of(cfg).name
            assert name == (prefix or "sliding+") + mode
            assert dataclasses.asdict(EvalMode.parse(name).eval_config(src)) == dataclasses.asdict(cfg)
    assert EvalMode.parse("slot").eval_config(src).slot_carry is False


def test_variant_runs_through_evaluate():
    cfg = EvalMode.parse("causal-slot-carry-bias").eval_config(EvalConfig(seq_len=16, batch_seqs=4,
                                                                           slot_steps=2))
    out = evaluate(TinyCausalLM(), make_tokens(100), make_tables(), cfg, Comm(), CPU)
    assert out["mode"] == "sliding+causal-slot-carry-bias" and out["causal"] is True


def test_config_rejects_carry_with_batch_slot():
    cfg = Config()
    cfg.eval.slot_mode, cfg.eval.slot_carry = "batch", True
    with pytest.raises(ConfigError, match="slot_carry"):
        finalize_config(cfg)
