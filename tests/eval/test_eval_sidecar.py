"""Byte sidecars in evaluation: with bytes equal to the tables', every mode's bpb is the
tables' bpb exactly; with other bytes, bpb follows the sidecar (the CaseOps case)."""

import sys
from types import SimpleNamespace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import VOCAB, TinyCausalLM, make_tables, make_tokens  # noqa: E402

from pgolf.config_tree import EvalConfig  # noqa: E402
from pgolf.data.sidecar import SidecarBytes  # noqa: E402
from pgolf.data.tokenizer import count_bytes  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.runner import EvalMode, evaluate  # noqa: E402

N = 160
BASE = dict(seq_len=32, stride=8, batch_seqs=4, ttt_chunk_tokens=64, ttt_epochs=1, ttt_batch_seqs=2,
            slot_steps=2, audit=False)


def _with_bos(model):
    model.cfg = SimpleNamespace(bos_id=1)  # per-document TTT cuts documents at the model's BOS
    return model


def _sidecar(tokens, tables, scale: int = 1) -> SidecarBytes:
    per_target = count_bytes(tokens[:-1], tokens[1:], tables) * scale
    # Position i holds the bytes of token i (target i-1); position 0 (the first token) is 0.
    return SidecarBytes(torch.cat((torch.zeros(1, dtype=torch.int64), per_target)), VOCAB)


EVERY_MODE = sorted(EvalMode.names())


@pytest.mark.parametrize("mode", EVERY_MODE)
def test_sidecar_equal_to_the_tables_gives_the_same_bpb(mode):
    # Every mode, per-document TTT included: its scorer once asked a sidecar for token tables.
    tokens, tables = make_tokens(N), make_tables()
    tokens[::37] = 1  # documents for the per-document modes (BOS = 1)
    ecfg = EvalMode.parse(mode).eval_config(EvalConfig(**BASE, ttt_lora_rank=0, ttt_lora_chunk=8,
                                                       ttt_phased_prefix_docs=2, ttt_phased_phases=2))
    a = evaluate(_with_bos(TinyCausalLM()), tokens, tables, ecfg, Comm(), torch.device("cpu"))
    b = evaluate(_with_bos(TinyCausalLM()), tokens, _sidecar(tokens, tables), ecfg, Comm(), torch.device("cpu"))
    assert a["bytes"] == b["bytes"] and a["tokens"] == b["tokens"]
    assert b["val_bpb"] == pytest.approx(a["val_bpb"], rel=1e-12)


def test_bpb_is_charged_on_the_sidecar_bytes():
    tokens, tables = make_tokens(N), make_tables()
    ecfg = EvalMode.parse("sliding").eval_config(EvalConfig(**BASE))
    a = evaluate(TinyCausalLM(), tokens, tables, ecfg, Comm(), torch.device("cpu"))
    b = evaluate(TinyCausalLM(), tokens, _sidecar(tokens, tables, scale=2), ecfg, Comm(), torch.device("cpu"))
    assert b["bytes"] == 2 * a["bytes"] and b["val_bpb"] == pytest.approx(a["val_bpb"] / 2, rel=1e-12)
