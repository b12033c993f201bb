"""`pgolf data tokenizer` / `retokenize`: the challenge's trainer settings, shards, sidecars."""

import json
import os
import random

import pytest
import sentencepiece
import torch
from sentencepiece import sentencepiece_model_pb2

from pgolf.cli import main
from pgolf.data.caseops import CASEOPS_SYMBOLS, decode_caseops
from pgolf.data.loader import load_validation_tokens
from pgolf.data.shards import load_shard
from pgolf.data.sidecar import load_validation_bytes, sidecar_path
from pgolf.data.tokenizer import build_byte_tables, count_bytes
from pgolf.data.tokenizer_train import (TokenizerTrainError, resolve_text_source, retokenize, shard_documents,
                                        train_tokenizer)

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "tokenizers")
WORDS = ("the court held that a state may not deny any person within its jurisdiction equal "
         "protection of laws Congress Senate NASA USA iPhone McDonald river 1999 2024 naïve").split()


def synthetic_docs(n: int, seed: int = 0, capitalize: bool = True) -> list[str]:
    """Documents from WORDS; capitalize=False keeps to characters a small tokenizer covers."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 60))]
        if capitalize:
            words[0] = words[0].capitalize()
        docs.append(" ".join(words) + ".")
    return docs


def trainer_spec(model_bytes: bytes):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def spec_fields(proto) -> dict:
    t, n = proto.trainer_spec, proto.normalizer_spec
    return dict(model_type=t.model_type, character_coverage=round(t.character_coverage, 6),
                split_digits=t.split_digits, byte_fallback=t.byte_fallback, hard_vocab_limit=t.hard_vocab_limit,
                ids=(t.pad_id, t.bos_id, t.eos_id, t.unk_id), norm=n.name, dummy=n.add_dummy_prefix,
                ws=n.remove_extra_whitespaces)


@pytest.fixture(scope="module")
def sp_small(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "small.model")
    info = train_tokenizer(synthetic_docs(200), 300, path)
    return path, info


def test_settings_match_the_challenge_model(sp_small):
    path, info = sp_small
    assert info["byte_fallback"] is False          # auto: off up to 1024, like fineweb_1024_bpe
    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    ours = spec_fields(trainer_spec(open(path, "rb").read()))
    ref_path = os.path.join(SHARED, "fineweb_1024_bpe.model")
    if not os.path.exists(ref_path):
        pytest.skip(f"challenge tokenizer not found: {os.path.abspath(ref_path)}")
    assert ours == spec_fields(trainer_spec(open(ref_path, "rb").read()))


def test_caseops_tokenizer_matches_the_record_layout(tmp_path):
    path = str(tmp_path / "c.model")
    info = train_tokenizer(synthetic_docs(200), 1100, path, caseops=True)
    assert info["byte_fallback"] is True and info["text_transform"] == "lossless_caps_caseops_v1"
    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    assert [sp.id_to_piece(i) for i in range(4, 8)] == list(CASEOPS_SYMBOLS)
    assert all(sp.is_byte(i) for i in range(8, 264))
    assert not any(ch.isupper() and ch.isascii() for i in range(264, sp.vocab_size()) for ch in sp.id_to_piece(i))
    ref_path = os.path.join(SHARED, "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model")
    if not os.path.exists(ref_path):
        pytest.skip(f"record tokenizer not found: {os.path.abspath(ref_path)}")
    ref = trainer_spec(open(ref_path, "rb").read())
    ours = trainer_spec(open(path, "rb").read())
    assert spec_fields(ours) == spec_fields(ref)
    assert [p.type for p in ours.pieces[:264]] == [p.type for p in ref.pieces[:264]]


def test_training_refuses_empty_sources(tmp_path):
    with pytest.raises(TokenizerTrainError, match="no non-empty document"):
        train_tokenizer(["", "  "], 300, str(tmp_path / "x.model"))


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"text": d}) + "\n")


def test_retokenize_writes_documents_and_exact_sidecars(tmp_path, sp_small):
    docs = synthetic_docs(40, seed=5, capitalize=False)
    write_jsonl(tmp_path / "docs.jsonl", docs)
    src = resolve_text_source([str(tmp_path / "docs.jsonl")], val_docs=10)
    path, _ = sp_small
    out = str(tmp_path / "shards")
    man = retokenize(src, path, out, sidecar=True, shard_tokens=500, log=lambda *_: None)
    assert man["splits"]["val"]["documents"] == 10 and man["splits"]["train"]["documents"] == 30
    assert len([f for f in man["files"] if "train" in f]) > 1           # shard_tokens splits train
    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    for split, want in (("val", docs[:10]), ("train", docs[10:])):
        files = [os.path.join(out, f) for f in man["files"] if f.startswith(f"fineweb_{split}_")]
        got = list(shard_documents(files, sp))
        assert got == want          # plain ASCII single-spaced text survives normalization
        assert sum(int((load_shard(f) == 1).sum()) for f in files) == len(want)
    val = os.path.join(out, "fineweb_val_000000.bin")
    assert os.path.exists(sidecar_path(val))
    assert not os.path.exists(sidecar_path(os.path.join(out, "fineweb_train_000000.bin")))
    tokens = load_validation_tokens([val], 16)
    side = load_validation_bytes([val], tokens.numel())
    # Plain path: the tokenizer's byte tables give the same per-token bytes on such text.
    tables = build_byte_tables(sp, sp.vocab_size())
    assert torch.equal(side[1:], count_bytes(tokens[:-1], tokens[1:], tables))
    vals = [os.path.join(out, f) for f in man["files"] if f.startswith("fineweb_val_")]
    n_val = sum(int(load_shard(f).size) for f in vals)
    assert int(load_validation_bytes(vals, n_val).sum()) == sum(len(d.encode()) for d in docs[:10])
    with pytest.raises(TokenizerTrainError, match="already holds shards"):
        retokenize(src, path, out)


def test_retokenize_caseops_charges_original_bytes(tmp_path):
    docs = synthetic_docs(60, seed=7) + ["ALL CAPS TITLE Words and \ue001 literal \ue004 symbols. FOO-bar"]
    write_jsonl(tmp_path / "d.jsonl", docs)
    tok = str(tmp_path / "c.model")
    train_tokenizer(docs, 1100, tok, caseops=True)
    src = resolve_text_source([str(tmp_path / "d.jsonl")], val_docs=len(docs) - 20)
    src_all = lambda: ((("val" if i % 2 else "train"), d) for i, d in enumerate(docs))  # noqa: E731
    for source in (src, src_all):
        out = str(tmp_path / f"o{id(source)}")
        man = retokenize(source, tok, out, caseops=True, log=lambda *_: None)
        val = os.path.join(out, "fineweb_val_000000.bin")
        n = int(load_shard(val).size)
        side = load_validation_bytes([val], n)
        val_docs = [d for i, (s, d) in enumerate(source()) if s == "val"]
        assert int(side.sum()) == man["splits"]["val"]["counted_bytes"] == sum(len(d.encode()) for d in val_docs)
        sp = sentencepiece.SentencePieceProcessor(model_file=tok)
        assert [decode_caseops(d) for d in shard_documents([val], sp)] == val_docs


def test_retokenize_refuses_a_tokenizer_without_caseops(tmp_path, sp_small):
    write_jsonl(tmp_path / "d.jsonl", synthetic_docs(4))
    src = resolve_text_source([str(tmp_path / "d.jsonl")], val_docs=2)
    with pytest.raises(TokenizerTrainError, match="no CaseOps control pieces"):
        retokenize(src, sp_small[0], str(tmp_path / "o"), caseops=True)


def test_shard_folder_source_keeps_splits(tmp_path, sp_small):
    docs = synthetic_docs(12, seed=9, capitalize=False)
    write_jsonl(tmp_path / "d.jsonl", docs)
    out = str(tmp_path / "s")
    retokenize(resolve_text_source([str(tmp_path / "d.jsonl")], val_docs=4), sp_small[0], out,
               log=lambda *_: None)
    back = list(resolve_text_source([out], source_tokenizer=sp_small[0])())
    assert back == [("train", d) for d in docs[4:]] + [("val", d) for d in docs[:4]]
    with pytest.raises(TokenizerTrainError, match="--source-tokenizer"):
        resolve_text_source([out])


def test_cli_tokenizer_and_retokenize(tmp_path, capsys):
    docs = synthetic_docs(30, seed=11)
    for k, d in enumerate(docs):
        (tmp_path / f"doc{k:02d}.txt").write_text(d, encoding="utf-8")
    files = sorted(str(p) for p in tmp_path.glob("doc*.txt"))
    model = str(tmp_path / "t.model")
    assert main(["data", "tokenizer", *files, "--vocab-size", "1100", "--caseops", "--out", model]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == 30 and info["byte_fallback"] is True
    out = str(tmp_path / "shards")
    assert main(["data", "retokenize", *files, "--tokenizer", model, "--caseops", "--val-docs", "5",
                 "--out", out]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["sidecar"] is True and man["splits"]["val"]["documents"] == 5
    assert main(["data", "tokenizer", str(tmp_path / "missing.txt"), "--vocab-size", "300",
                 "--out", str(tmp_path / "m.model")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.txt not found" in err and "\n" not in err
