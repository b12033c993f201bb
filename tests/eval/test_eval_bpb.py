"""bpb arithmetic, byte tables and the plain evaluator against hand-computed values."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import VOCAB, TinyCausalLM, make_tokens  # noqa: E402

from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import (BpbAccumulator, ByteTables, EvalInputError, ScoreRecorder, as_byte_tables,  # noqa: E402
                            eval_plain)

CPU = torch.device("cpu")


class UniformLM(TinyCausalLM):
    """Zero logits: every target costs exactly ln(V) nats."""

    def compute_logits(self, h):
        return torch.zeros(*h.shape[:2], self.vocab_size)


def test_hand_computed_bpb():
    # vocab: 0 = boundary (BOS), 1 = "▁ab" (2 bytes + space), 2 = "c" (1 byte), 3 = "▁" + "é" (2 + space)
    tables = ByteTables(np.array([0, 2, 1, 2], np.int16), np.array([0, 1, 0, 1], bool),
                        np.array([1, 0, 0, 0], bool))
    prev = torch.tensor([0, 1, 2, 3])
    tgt = torch.tensor([1, 2, 3, 1])
    # bytes: 1 after boundary -> 2; 2 -> 1; 3 after 2 -> 3; 1 after 3 -> 3  => 9
    assert tables.token_bytes(prev, tgt).tolist() == [2, 1, 3, 3]
    acc = BpbAccumulator()
    acc.add(torch.tensor([1.0, 2.0, 0.5, 0.5]), prev, tgt, tables)
    assert acc.tokens == 4 and acc.bytes == 9
    assert acc.val_loss == pytest.approx(1.0)
    assert acc.val_bpb == pytest.approx(4.0 / math.log(2) / 9)
    # A mask drops positions from all three sums.
    acc2 = BpbAccumulator()
    acc2.add(torch.tensor([1.0, 2.0, 0.5, 0.5]), prev, tgt, tables, torch.tensor([True, False, True, False]))
    assert (acc2.tokens, acc2.bytes) == (2, 5) and acc2.nll == pytest.approx(1.5)


def test_eval_plain_uniform_model_matches_hand_count(tables):
    tokens = make_tokens(96)
    out = eval_plain(UniformLM(), tokens, 16, 64, tables, Comm(), CPU)
    base, space, boundary = tables
    nbytes = sum(int(base[t]) + int(space[t] and not boundary[p])
                 for p, t in zip(tokens[:-1].tolist(), tokens[1:].tolist()))
    assert out["tokens"] == 96 and out["bytes"] == nbytes
    assert out["val_loss"] == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert out["val_bpb"] == pytest.approx(96 * math.log(VOCAB) / math.log(2) / nbytes, rel=1e-6)


def test_eval_plain_records_every_target_once_with_short_tail(tiny_model, tables):
    tokens = make_tokens(50)
    rec = ScoreRecorder(50)
    out = eval_plain(tiny_model, tokens, 16, 32, tables, Comm(), CPU, recorder=rec)
    assert out["tokens"] == 50
    assert (rec.count_array() == 1).all()
    # Window 4 is the 2-token tail [48, 50) scored from its own start.
    x = tokens[48:50][None]
    y = tokens[49:51][None]
    with torch.no_grad():
        ref = tiny_model.token_nll(x, y)[0].double().numpy()
    np.testing.assert_allclose(rec.nll_array()[48:50], ref, rtol=1e-6)
    assert out["val_loss"] == pytest.approx(rec.nll_array().mean(), rel=1e-9)


def test_bad_inputs_raise_one_line_errors(tiny_model, tables):
    with pytest.raises(EvalInputError, match="1-D"):
        eval_plain(tiny_model, torch.zeros(2, 5, dtype=torch.long), 4, 16, tables, Comm(), CPU)
    with pytest.raises(EvalInputError, match="build_byte_tables"):
        as_byte_tables((np.zeros(3),), CPU)
