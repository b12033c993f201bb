"""`pgolf sample`: generation from a model, the run's tokenizer (CaseOps included), the command."""

import io
import random
import shutil
import sys
from pathlib import Path

import pytest
import sentencepiece
import torch

from pgolf.cli import main
from pgolf.config import resolve_config
from pgolf.data.caseops import CASEOPS_SYMBOLS, CASEOPS_TITLE, decode_caseops, encode_caseops
from pgolf.data.tokenizer_train import train_tokenizer
from pgolf.model.build import build_model
from pgolf.run import train
from pgolf.sample import (SampleError, SampleOptions, TextCodec, caseops_text, generate, next_token, sample_command,
                          stream_text)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import tiny  # noqa: E402

TINY_MODEL = ["model.num_layers=2", "model.model_dim=32", "model.num_heads=2", "model.num_kv_heads=1",
              "model.bigram_dim=8", "model.ve_dim=8", "model.bigram_vocab_size=128", "run.train_seq_len=64",
              "run.device=cpu"]
MIXED_CASE = "The court held that NASA and the USA may not deny iPhone users of McDonald river 1999."


@pytest.fixture(scope="module")
def model():
    """A tiny model with weights far from their init, so its argmax varies with the context."""
    cfg, _ = resolve_config("smoke", None, {}, TINY_MODEL)
    torch.manual_seed(0)
    m = build_model(cfg, torch.device("cpu"))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    return m


def plain_greedy(model, ids, n, context):
    seq = list(ids)
    for _ in range(n):
        with torch.no_grad():
            logits = model.forward_logits(torch.tensor([seq[-context:]]))[0, -1]
        seq.append(int(logits.argmax()))
    return seq[len(ids):]


def test_greedy_is_the_argmax_of_the_models_logits_step_by_step(model):
    prompt = [1, 17, 300]
    got = list(generate(model, prompt, 24, temperature=0.0, context=8))  # 27 > 8: the window slides
    assert got == plain_greedy(model, prompt, 24, context=8)
    assert len(set(got)) > 3  # a model whose argmax never moves would prove nothing


def test_a_seed_gives_the_same_tokens_and_another_seed_others(model):
    draw = lambda seed: list(generate(model, [1], 20, temperature=1.0, top_k=0,
                                      generator=torch.Generator().manual_seed(seed), context=64))
    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_top_k_one_is_greedy_at_any_temperature(model):
    greedy = list(generate(model, [1, 5], 16, temperature=0.0, context=64))
    for temperature in (0.5, 2.0):
        got = list(generate(model, [1, 5], 16, temperature=temperature, top_k=1,
                            generator=torch.Generator().manual_seed(9), context=64))
        assert got == greedy


def test_top_k_draws_only_among_the_k_most_likely():
    logits = torch.tensor([0.0, 5.0, 1.0, 4.0, 3.0, 2.0])
    g = torch.Generator().manual_seed(0)
    top3 = {next_token(logits, 5.0, 3, g) for _ in range(300)}
    every = {next_token(logits, 5.0, 0, g) for _ in range(300)}
    assert top3 == {1, 3, 4}
    assert every == set(range(6))
    assert next_token(logits, 0.0, 0, None) == 1


def test_caseops_text_decodes_like_decode_caseops_and_forgives_stray_markers():
    rng = random.Random(0)
    words = MIXED_CASE.split() + ["McDONALD", "a", "A", "x\ue001y", "\ue004"]
    for _ in range(50):
        text = " ".join(rng.choice(words) for _ in range(12))
        enc = encode_caseops(text)
        assert caseops_text(enc) == decode_caseops(enc) == text
        # Streaming relies on it: every prefix decodes to a prefix of the whole.
        assert all(text.startswith(caseops_text(enc[:i])) for i in range(len(enc) + 1))
    # What a sampled model may write: a marker before a space or at the end is dropped.
    assert caseops_text(f"{CASEOPS_TITLE} the{CASEOPS_TITLE}") == " the"


@pytest.fixture(scope="module")
def caseops_tokenizer(tmp_path_factory):
    rng = random.Random(1)
    docs = [" ".join(rng.choice(MIXED_CASE.split()) for _ in range(40)) for _ in range(60)]
    path = str(tmp_path_factory.mktemp("tok") / "caseops.model")
    train_tokenizer(docs, 300, path, caseops=True)
    return sentencepiece.SentencePieceProcessor(model_file=path)


def test_a_caseops_tokenizer_encodes_as_the_shards_do_and_streams_the_cased_text(caseops_tokenizer):
    codec = TextCodec(caseops_tokenizer, bos_id=1)
    assert codec.caseops
    ids = codec.encode(MIXED_CASE)
    assert ids[0] == 1
    pieces = [caseops_tokenizer.id_to_piece(i) for i in ids[1:]]
    assert any(p in CASEOPS_SYMBOLS for p in pieces)  # the prompt went in CaseOps-encoded
    writes = []
    text = stream_text(codec, [1], iter(ids[1:]), writes.append)
    assert text == "".join(writes) == MIXED_CASE
    assert len(writes) > 5  # streamed piece by piece, not written once at the end
    # A BOS the model writes starts a new document: a new line.
    assert codec.decode(ids + ids) == MIXED_CASE + "\n" + MIXED_CASE


def test_characters_split_over_byte_pieces_are_written_whole(embedded_corpus):
    sp = sentencepiece.SentencePieceProcessor(model_file=embedded_corpus["tokenizer_path"])
    codec = TextCodec(sp, bos_id=1)
    text = "naïve € 😀 done"
    ids = codec.encode(text)
    assert sum(sp.is_byte(i) for i in ids) >= 9  # ï, € and 😀 go in as 2, 3 and 4 byte pieces
    writes = []
    assert stream_text(codec, [1], iter(ids[1:]), writes.append) == text
    assert "".join(writes) == text and not any("\ufffd" in w for w in writes)
    assert "😀" in writes and len(writes) > 5
    # A byte that starts no character is written at once (as U+FFFD), not held back forever.
    writes = []
    stream_text(codec, [1], iter([sp.piece_to_id("<0xF6>")] * 3 + ids[-1:]), writes.append)
    assert writes[0] == "\ufffd"


def test_bad_options_are_refused_before_anything_loads():
    for opts, flag in ((SampleOptions(tokens=0), "--tokens"), (SampleOptions(temperature=-0.1), "--temperature"),
                       (SampleOptions(temperature=float("nan")), "--temperature"),
                       (SampleOptions(top_k=-1), "--top-k")):
        with pytest.raises(SampleError, match=flag):
            sample_command("/nonexistent/run", opts)


# ---------------------------------------------------------------- on a trained run

@pytest.fixture(scope="module")
def finished_run(embedded_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("sample_cli") / "run"
    train(tiny(embedded_corpus, "run.iterations=12"), str(out))
    return out


@pytest.mark.slow
def test_the_command_streams_text_to_stdout_and_a_seed_repeats_it(finished_run, capsys):
    argv = ["sample", str(finished_run), "--prompt", "To be, or not", "--tokens", "24", "--seed", "5"]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert first.out.startswith("To be, or not") and len(first.out) > len("To be, or not\n")
    assert "de-quantized artifact" in first.err and "de-quantized" not in first.out  # stdout is the text alone
    assert main(argv) == 0
    assert capsys.readouterr().out == first.out
    assert main(argv[:-1] + ["6"]) == 0
    assert capsys.readouterr().out != first.out


@pytest.mark.slow
def test_the_command_writes_as_it_generates(finished_run):
    class Recorder(io.StringIO):
        writes = 0

        def write(self, s):
            Recorder.writes += 1
            return super().write(s)

    out = Recorder()
    text = sample_command(str(finished_run), SampleOptions(prompt="KING", tokens=20, temperature=0.0),
                          out=out, err=io.StringIO())
    assert out.getvalue() == "KING" + text + "\n"
    assert Recorder.writes > 4  # the prompt, then the text as it comes, then the newline


@pytest.mark.slow
def test_float_weights_and_artifacts_without_their_folder(finished_run, tmp_path, capsys):
    assert main(["sample", str(finished_run), "--float", "--tokens", "8", "--temperature", "0"]) == 0
    assert "float weights" in capsys.readouterr().err
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copyfile(finished_run / "model.ptz", lone / "m.ptz")  # its config travels inside it
    assert main(["sample", str(lone / "m.ptz"), "--tokens", "8", "--temperature", "0"]) == 0
    assert len(capsys.readouterr().out) > 1
    assert main(["sample", str(lone / "m.ptz"), "--float"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--float needs the run folder" in err and "\n" not in err


@pytest.mark.slow
def test_a_run_without_its_artifact_is_one_line_error(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(finished_run / "config.toml", run / "config.toml")
    assert main(["sample", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.ptz" in err and "\n" not in err
    assert main(["sample", str(finished_run), "--tokens", "0"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
