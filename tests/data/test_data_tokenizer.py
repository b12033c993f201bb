from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.data.tokenizer import TokenizerError, build_byte_tables, count_bytes, decode_tokens, load_tokenizer

SHARED_TOK = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tokenizers"
              / "fineweb_1024_bpe.model")


@pytest.fixture(scope="module")
def sp():
    if not SHARED_TOK.is_file():
        pytest.skip(f"shared tokenizer absent: {SHARED_TOK} (expected ../shared beside the checkout)")
    return load_tokenizer(str(SHARED_TOK), 1024)


def _bytes_of(sp, tables, text):
    ids = torch.tensor([sp.bos_id()] + sp.encode(text))
    return count_bytes(ids[:-1], ids[1:], tables)


def test_tables_special_pieces(sp):
    base, space, boundary = build_byte_tables(sp, 1030)
    assert base.dtype == np.int16 and space.dtype == np.bool_ and boundary.dtype == np.bool_
    assert len(base) == 1030
    for i in (0, 1, 2, 3):  # pad, bos, eos, unk
        assert boundary[i] and base[i] == 0 and not space[i]
    assert boundary[1024:].all() and (base[1024:] == 0).all()
    wid = sp.piece_to_id("\u2581world")
    assert base[wid] == 5 and space[wid] and not boundary[wid]
    ell = sp.piece_to_id("ell")
    assert base[ell] == 3 and not space[ell]
    bare = sp.piece_to_id("\u2581")
    assert base[bare] == 0 and space[bare]
    assert not boundary[4:1024].any()  # this tokenizer has no byte or unused pieces


def test_count_bytes_hello_world(sp):
    tables = build_byte_tables(sp, 1024)
    per = _bytes_of(sp, tables, "Hello world")
    assert sp.encode("Hello world", out_type=str) == ["H", "ell", "o", "\u2581world"]
    assert per.tolist() == [1, 3, 1, 6]
    assert per.dtype == torch.int64
    text = "The cat sat, 2024 times; naive? Yes!"
    assert int(_bytes_of(sp, tables, text).sum()) == len(text.encode("utf-8"))


def test_space_after_boundary_not_counted(sp):
    tables = build_byte_tables(sp, 1024)
    wid = sp.piece_to_id("\u2581world")
    prev = torch.tensor([1, 3, 4])  # bos, unk, normal piece
    tgt = torch.tensor([wid, wid, wid])
    assert count_bytes(prev, tgt, tables).tolist() == [5, 5, 6]
    # unk swallows its character's bytes: a known accounting quirk of the reference
    assert int(_bytes_of(sp, tables, "a \u2603 b").sum()) == 3


def test_byte_fallback_pieces_count_one():
    import sentencepiece as spm

    class Fake:
        def vocab_size(self): return 6
        def is_control(self, i): return i == 0
        def is_unknown(self, i): return i == 1
        def is_unused(self, i): return i == 5
        def is_byte(self, i): return i == 2
        def id_to_piece(self, i): return ["<s>", "<unk>", "<0xE2>", "\u2581h\u00e9", "ab", "x"][i]
    base, space, boundary = build_byte_tables(Fake(), 7)
    assert base.tolist() == [0, 0, 1, 3, 2, 0, 0]
    assert space.tolist() == [False, False, False, True, False, False, False]
    assert boundary.tolist() == [True, True, False, False, False, True, True]
    assert spm is not None


def test_vocab_mismatch_and_missing(sp, tmp_path):
    with pytest.raises(TokenizerError, match="has vocabulary 1024 but model.vocab_size is 1000: "
                                             "pass the matching tokenizer"):
        load_tokenizer(str(SHARED_TOK), 1000)
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(str(tmp_path / "none.model"), 1024)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a readable SentencePiece model"):
        load_tokenizer(str(junk), 1024)


def test_decode(sp):
    ids = sp.encode("Hello world")
    assert decode_tokens(sp, torch.tensor(ids)) == "Hello world"
    assert decode_tokens(sp, np.array(ids)) == "Hello world"
