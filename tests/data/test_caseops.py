"""CaseOps transform (round trip, the record's rules) and the per-token byte sidecars."""

import os
import random

import numpy as np
import pytest
import torch

from pgolf.data.caseops import (CASEOPS_ALLCAPS, CASEOPS_CAPNEXT, CASEOPS_ESC, CASEOPS_SYMBOLS, CASEOPS_TITLE,
                                CaseOpsError, caseops_piece_bytes, decode_caseops, encode_caseops,
                                tokenizer_has_caseops)
from pgolf.data.loader import load_validation_tokens
from pgolf.data.shards import load_shard, write_shard
from pgolf.data.sidecar import (SidecarBytes, SidecarError, is_sidecar, load_validation_bytes, sidecar_path,
                                token_shards_only, write_sidecar)
from pgolf.data.tokenizer_train import encode_document
from pgolf.errors import PgolfError

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")
CASEOPS_MODEL = os.path.join(SHARED, "tokenizers", "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model")
SP1024_MODEL = os.path.join(SHARED, "tokenizers", "fineweb_1024_bpe.model")
FINEWEB_VAL = os.path.join(SHARED, "datasets", "fineweb_legal_sp1024", "fineweb_val_000000.bin")
T, A, C, E = CASEOPS_TITLE, CASEOPS_ALLCAPS, CASEOPS_CAPNEXT, CASEOPS_ESC


def need(path):
    if not os.path.exists(path):
        pytest.skip(f"shared data not found: {os.path.abspath(path)}")
    return path


def plain_encode(text: str) -> str:
    """The record's rules written out character by character, as the reference for encode_caseops."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch in CASEOPS_SYMBOLS:
            out += [E, ch]
            i += 1
            continue
        if not ch.isascii() or not ch.isalpha():
            out.append(ch)
            i += 1
            continue
        j = i
        while j < len(text) and text[j].isascii() and text[j].isalpha():
            j += 1
        word = text[i:j]
        if all(c.islower() for c in word):
            out.append(word)
        elif len(word) >= 2 and all(c.isupper() for c in word):
            out += [A, word.lower()]
        else:
            if word[0].isupper():
                out.append(T)
            out.append(word[0].lower())
            for c in word[1:]:
                out += [C, c.lower()] if c.isupper() else [c]
        i = j
    return "".join(out)


def random_text(rng: random.Random, n: int) -> str:
    alphabet = list("abcXYZ eE\n\t.-'9") + ["é", "日", "😀", "ｆ", "ﬁ", "\u00a0"] + list(CASEOPS_SYMBOLS)
    return "".join(rng.choice(alphabet) for _ in range(n))


SAMPLES = ["The NASA iPhone McDonald A b", "x-Ray OK. eBay ÉCOLE naïve", f"lit{T}{E}eral {A}X",
           "", "   lead and trail  ", "ABC1DEF a1B", "日本語 Ｆull ﬁne 😀 I'm I"]


def test_encode_follows_the_records_rules():
    assert encode_caseops("The NASA iPhone McDonald A b") == (
        f"{T}the {A}nasa i{C}phone {T}mc{C}donald {T}a b")
    assert encode_caseops(f"x{T}y{E}") == f"x{E}{T}y{E}{E}"
    assert encode_caseops("naïve ÉCOLE") == f"naïve É{A}cole"   # only ASCII letters change case
    rng = random.Random(0)
    for text in SAMPLES + [random_text(rng, 60) for _ in range(300)]:
        assert encode_caseops(text) == plain_encode(text), repr(text)


def test_round_trip_is_lossless_and_lowercases():
    rng = random.Random(1)
    for text in SAMPLES + [random_text(rng, 80) for _ in range(500)]:
        enc = encode_caseops(text)
        assert decode_caseops(enc) == text
        assert not any("A" <= ch <= "Z" for ch in enc)


@pytest.mark.parametrize("bad", [T, f"{T} a", f"a{T}b", f"{A}{T}a", f"{C}{C}a", f"{E}", f"{T}{E}{T}", f"{C}."])
def test_decode_refuses_misplaced_markers(bad):
    with pytest.raises(CaseOpsError) as info:
        decode_caseops(bad)
    assert isinstance(info.value, PgolfError) and "\n" not in str(info.value)


def test_piece_bytes_match_decoding_at_every_cut():
    rng = random.Random(2)
    for text in SAMPLES + [random_text(rng, 50) for _ in range(200)]:
        enc = encode_caseops(text)
        cuts = sorted(rng.sample(range(len(enc) + 1), min(len(enc) + 1, 8)))
        bounds = [0] + cuts + [len(enc)]
        surfaces = [enc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        counts = caseops_piece_bytes(surfaces)
        assert sum(counts) == len(text.encode("utf-8"))
        done = ""
        for k, s in enumerate(surfaces):
            done += s
            try:
                prefix = decode_caseops(done)
            except CaseOpsError:
                continue   # a cut inside a marker's reach: checked at the next clean cut
            assert sum(counts[:k + 1]) == len(prefix.encode("utf-8"))


def test_piece_bytes_refuse_a_dangling_escape():
    with pytest.raises(CaseOpsError):
        caseops_piece_bytes(["ab", E])


def test_record_tokenizer_charges_the_original_bytes():
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=need(CASEOPS_MODEL))
    assert [sp.id_to_piece(i) for i in range(4, 8)] == list(CASEOPS_SYMBOLS)
    assert tokenizer_has_caseops(sp)
    assert not tokenizer_has_caseops(sentencepiece.SentencePieceProcessor(model_file=need(SP1024_MODEL)))
    rng = random.Random(3)
    texts = [s.strip() for s in SAMPLES] + [random_text(rng, 200).strip() for _ in range(50)]
    for text in texts:
        ids, counts, covered = encode_document(sp, text, caseops=True)
        assert ids[0] == sp.bos_id() and counts[0] == 0 and len(ids) == len(counts)
        # SentencePiece drops only leading/trailing whitespace; stripped texts lose nothing.
        assert sum(counts) == covered == len(text.strip(" \t\n\u00a0").encode("utf-8")), repr(text)
        if not any(ch in text for ch in "ｆﬁＦ"):
            # NFKC can turn such characters into ASCII letters beside a marker, which then no
            # longer decodes; bytes are unaffected since they come from the input's surfaces.
            normalized = sp.normalize(encode_caseops(text)).replace("\u2581", " ")
            assert decode_caseops(sp.decode(ids[1:])) == decode_caseops(normalized)
    ascii_text = "The NASA launch of McDonald's iPhone ABC was OK in 1999."
    ids, _, _ = encode_document(sp, ascii_text, caseops=True)
    assert decode_caseops(sp.decode(ids[1:])) == ascii_text


def test_record_tokenizer_on_fineweb_documents():
    import sentencepiece
    sp8 = sentencepiece.SentencePieceProcessor(model_file=need(CASEOPS_MODEL))
    sp1 = sentencepiece.SentencePieceProcessor(model_file=need(SP1024_MODEL))
    tokens = np.asarray(load_shard(need(FINEWEB_VAL)), dtype=np.int64)[:200_000]
    starts = list(np.flatnonzero(tokens == 1))
    for a, b in list(zip(starts[:-1], starts[1:]))[:20]:
        text = sp1.decode(tokens[a + 1:b].tolist())
        assert decode_caseops(encode_caseops(text)) == text
        ids, counts, covered = encode_document(sp8, text, caseops=True)
        assert sum(counts) == covered == len(text.strip().encode("utf-8"))


def test_sidecar_names_and_filter(tmp_path):
    shard = str(tmp_path / "fineweb_val_000003.bin")
    assert sidecar_path(shard) == str(tmp_path / "fineweb_val_bytes_000003.bin")
    assert is_sidecar(sidecar_path(shard)) and not is_sidecar(shard)
    assert token_shards_only([shard, sidecar_path(shard)]) == [shard]
    with pytest.raises(SidecarError):
        sidecar_path(str(tmp_path / "val.bin"))


def test_validation_bytes_align_with_validation_tokens(tmp_path):
    rng = np.random.default_rng(0)
    files, all_counts = [], []
    for k, n in enumerate((300, 250)):
        path = str(tmp_path / f"fineweb_val_{k:06d}.bin")
        write_shard(path, rng.integers(0, 50, n))
        counts = rng.integers(0, 9, n)
        write_sidecar(path, counts)
        files.append(path)
        all_counts.append(counts)
    pattern = str(tmp_path / "fineweb_val_[0-9]*.bin")
    tokens = load_validation_tokens(pattern, 64)
    got = load_validation_bytes(files + [sidecar_path(files[0])], tokens.numel())
    expect = np.concatenate(all_counts)[:tokens.numel()]
    assert torch.equal(got, torch.from_numpy(expect))
    sb = SidecarBytes(got, 50)
    starts = torch.tensor([0, 64, 128])
    want = torch.stack([got[s + 1:s + 65] for s in starts.tolist()])
    assert torch.equal(sb.window_bytes(starts, 64), want)
    assert sb.total() == int(expect[1:].sum()) and sb.vocab_size == 50


def test_sidecar_mismatch_and_absence(tmp_path):
    a, b = str(tmp_path / "fineweb_val_000000.bin"), str(tmp_path / "fineweb_val_000001.bin")
    write_shard(a, np.arange(10))
    write_shard(b, np.arange(10))
    assert load_validation_bytes([a, b], 19) is None
    write_sidecar(a, np.ones(10))
    with pytest.raises(SidecarError, match="no byte sidecar"):
        load_validation_bytes([a, b], 19)
    write_sidecar(b, np.ones(9))
    with pytest.raises(SidecarError, match="9 byte counts for 10 tokens"):
        load_validation_bytes([a, b], 19)
    with pytest.raises(SidecarError, match="uint16"):
        write_sidecar(a, [70_000])
