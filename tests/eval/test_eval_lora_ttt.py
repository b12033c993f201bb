"""Per-document LoRA TTT: reset per document, score before update, no-op settings equal plain eval."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_helpers import VOCAB, make_documents, make_tables  # noqa: E402

from pgolf.config import ConfigError, finalize_config  # noqa: E402
from pgolf.config_checks import config_problems  # noqa: E402
from pgolf.config_tree import Config, EvalConfig
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import EvalInputError, ScoreRecorder  # noqa: E402
from pgolf.eval.legality import audit  # noqa: E402
from pgolf.eval.lora_ttt import doc_chunk_windows, eval_lora_ttt, split_documents  # noqa: E402
from pgolf.eval.runner import EvalMode, evaluate  # noqa: E402
from pgolf.eval.sliding import eval_sliding  # noqa: E402
from pgolf.model.banks import unbank_state_dict  # noqa: E402
from pgolf.model.gpt import GPT  # noqa: E402

CPU = torch.device("cpu")
N = 200
BOS = 1
DOC_STARTS = [0, 57, 130]  # three documents of 57, 73 and 70 targets


def _tokens(n: int = N, starts: list = DOC_STARTS) -> torch.Tensor:
    return make_documents(n, starts, BOS)


def _cfg(**kw) -> EvalConfig:
    base = dict(seq_len=32, ttt_enabled=True, ttt_kind="lora", ttt_lora_rank=4, ttt_lora_lr=0.01,
                ttt_lora_chunk=8)
    base.update(kw)
    return EvalConfig(**base)


def _run(model, tokens, cfg, bos_id=None):
    n = tokens.numel() - 1
    rec, events = ScoreRecorder(n), []
    out = eval_lora_ttt(model, tokens, cfg, make_tables(), Comm(), CPU, recorder=rec, events=events,
                        bos_id=bos_id)
    return out, rec.nll_array(), rec.count_array(), events


def test_documents_and_chunk_windows_cover_every_target_once():
    t = _tokens()
    docs = split_documents(t, BOS)
    assert docs == [(0, 57), (57, 130), (130, N)]
    # A stream not starting with BOS keeps its head as a leading document.
    assert split_documents(t[5:], BOS)[0] == (0, 52)
    count = np.zeros(N, int)
    for lo, hi in docs:
        for start, a, b in doc_chunk_windows(lo, hi, 8, 32):
            assert lo <= start <= a < b <= hi and b - start <= 32
            count[a:b] += 1
    assert (count == 1).all()
    # The window start comes from the chunk's nominal end: a shorter last chunk keeps it.
    assert doc_chunk_windows(0, 45, 8, 32)[-1] == (16, 40, 45)


def test_scores_of_a_document_do_not_depend_on_the_previous_one(real_gpt):
    base, nll, count, _ = _run(real_gpt, _tokens(), _cfg())
    assert (count == 1).all() and base["docs"] == 3
    pert = _tokens()
    pert[10:50] = (pert[10:50] + 7 - 3) % (VOCAB - 3) + 3  # rewrite document 1, never into a BOS
    _, nll2, _, _ = _run(real_gpt, pert, _cfg())
    assert np.array_equal(nll[DOC_STARTS[1]:], nll2[DOC_STARTS[1]:])
    # Negative control: the perturbation does reach document 1's own later scores.
    assert not np.allclose(nll[10:DOC_STARTS[1]], nll2[10:DOC_STARTS[1]])


def test_adapters_learn_within_a_document_and_reset_at_its_end(real_gpt):
    _, plain, _, _ = _run(real_gpt, _tokens(), _cfg(ttt_lora_rank=0))
    _, adapted, _, _ = _run(real_gpt, _tokens(), _cfg(ttt_lora_lr=0.05))
    for lo in DOC_STARTS:
        # The first chunk of every document is scored by fresh adapters (B = 0): plain scores.
        assert np.array_equal(adapted[lo:lo + 8], plain[lo:lo + 8])
    assert not np.allclose(adapted[DOC_STARTS[1] + 8:DOC_STARTS[2]], plain[DOC_STARTS[1] + 8:DOC_STARTS[2]])


def test_every_update_follows_the_scores_it_reads(real_gpt):
    _, _, _, events = _run(real_gpt, _tokens(), _cfg(ttt_lora_steps=2))
    scored = np.zeros(N, bool)
    trains = 0
    for kind, lo, hi in events:
        if kind == "score":
            assert not scored[lo:hi].any()
            scored[lo:hi] = True
        else:
            trains += 1
            assert scored[max(lo - 1, 0):hi].all(), (lo, hi)
            assert hi not in (57, 130, N), "a document's last chunk is never trained on"
    # 8 + 10 + 9 chunks of 8 targets, 3 of them last in their document, 2 steps each.
    assert trains == 2 * (8 + 10 + 9 - 3)


def test_zero_rank_and_zero_lr_equal_plain_sliding_per_document(real_gpt):
    # Documents of 32 + 8k targets: the chunk windows are then exactly sliding windows of
    # stride 8 (the first one split into chunks, which causality keeps equal).
    starts = [0, 48, 104]
    t = _tokens(160, starts)
    out0, nll0, _, _ = _run(real_gpt, t, _cfg(ttt_lora_rank=0))
    outz, nllz, _, _ = _run(real_gpt, t, _cfg(ttt_lora_lr=0.0))
    assert np.array_equal(nll0, nllz) and out0["val_bpb"] == outz["val_bpb"]
    ref = np.concatenate([_sliding_nll(real_gpt, t[lo:hi + 1]) for lo, hi in split_documents(t, BOS)])
    np.testing.assert_allclose(nll0, ref, rtol=0, atol=2e-6)
    _, nll_ttt, _, _ = _run(real_gpt, t, _cfg())
    assert not np.allclose(nll_ttt, ref, atol=1e-4)


def _sliding_nll(model, doc_tokens):
    rec = ScoreRecorder(doc_tokens.numel() - 1)
    eval_sliding(model, doc_tokens, 32, 8, 4, make_tables(), Comm(), CPU, recorder=rec)
    return rec.nll_array()


def test_banked_and_per_layer_models_adapt_identically(real_gpt):
    twin = GPT(real_gpt.cfg, banked=False)
    twin.load_state_dict(unbank_state_dict(real_gpt.state_dict(), real_gpt.num_layers))
    out_b, nll_b, _, _ = _run(real_gpt, _tokens(), _cfg())
    out_l, nll_l, _, _ = _run(twin, _tokens(), _cfg())
    np.testing.assert_allclose(nll_b, nll_l, rtol=0, atol=1e-5)


def test_caller_model_is_untouched(real_gpt):
    before = {k: v.clone() for k, v in real_gpt.state_dict().items()}
    _run(real_gpt, _tokens(), _cfg())
    assert real_gpt.weight_transform is None
    assert all(torch.equal(v, before[k]) for k, v in real_gpt.state_dict().items())


def test_bos_comes_from_the_model_config(real_gpt):
    real_gpt.cfg.bos_id = 5  # every former 5 now starts a document
    out, _, _, _ = _run(real_gpt, _tokens(), _cfg())
    assert out["docs"] == len(split_documents(_tokens(), 5)) != 3


class _NoHeadSeam(GPT):
    """A GPT whose logits bypass weight_transform: a head adapter could never reach them."""

    def compute_logits(self, h):
        return torch.nn.functional.linear(h, self.tok_emb.weight.to(h.dtype)).float()


def test_head_adapter_learns_and_needs_the_models_head_seam(real_gpt):
    _, plain, _, _ = _run(real_gpt, _tokens(), _cfg(ttt_lora_rank=0))
    out, head, count, _ = _run(real_gpt, _tokens(), _cfg(ttt_lora_targets="head", ttt_lora_lr=0.05))
    assert (count == 1).all() and np.isfinite(out["val_bpb"])
    for lo, hi in zip(DOC_STARTS, DOC_STARTS[1:] + [N]):
        # First chunk: fresh adapters (B = 0) score like the plain model; later chunks were
        # scored by a head the document's earlier chunks trained.
        assert np.array_equal(head[lo:lo + 8], plain[lo:lo + 8])
        assert np.abs(head[lo + 8:hi] - plain[lo + 8:hi]).max() > 1e-3
    blind = _NoHeadSeam(real_gpt.cfg)
    blind.load_state_dict(real_gpt.state_dict())
    with pytest.raises(EvalInputError, match="weight_transform"):
        _run(blind, _tokens(), _cfg(ttt_lora_targets="head"))


def test_mode_names_and_config_rules():
    e = EvalMode.parse("lora-ttt").eval_config(EvalConfig(seq_len=32))
    assert e.ttt_enabled and e.ttt_kind == "lora" and EvalMode.of(e).name == "lora-ttt"
    assert EvalMode.parse("ttt").eval_config(e).ttt_kind == "global"
    assert EvalMode.of(EvalMode.parse("phased-ttt").eval_config(e)).name == "phased-ttt"
    cfg = Config()
    finalize_config(cfg)
    cfg.eval.ttt_lora_targets = "q,x"
    cfg.eval.ttt_lora_chunk = 10 ** 6
    assert "eval.ttt_lora_chunk" not in " ".join(config_problems(cfg))  # only checked when it runs
    cfg.eval.ttt_enabled, cfg.eval.ttt_kind = True, "lora"
    problems = " ".join(config_problems(cfg))
    assert "eval.ttt_lora_targets" in problems and "eval.ttt_lora_chunk" in problems
    cfg = Config()
    cfg.eval.ttt_lora_rank = -1
    with pytest.raises(ConfigError, match="eval.ttt_lora_rank"):
        finalize_config(cfg)


def test_evaluate_runs_the_lora_mode_and_refuses_slot(real_gpt):
    out = evaluate(real_gpt, _tokens(), make_tables(), _cfg(), Comm(), CPU)
    assert out["mode"] == "lora-ttt" and out["tokens"] == N and out["causal"]
    with pytest.raises(EvalInputError, match="slot_mode"):
        evaluate(real_gpt, _tokens(), make_tables(), _cfg(slot_mode="causal", stride=8), Comm(), CPU)


@pytest.mark.slow
def test_audit_passes_for_lora_ttt(real_gpt):
    report = audit(real_gpt, _tokens(), "lora-ttt", _cfg(audit_tokens=N), make_tables())
    assert report.ok, report.summary()
    assert report.score_before_update == "PASS" and report.normalized == "PASS"
