import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from pgolf.data.fineweb import FinewebError, download_fineweb, inspect_shard
from pgolf.data.shards import load_shard, write_shard

REPO = "someone/pg-fake"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHARED_TOK = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tokenizers"
              / "fineweb_1024_bpe.model")


class _FakeHub(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    requests: list = []

    def log_message(self, *args):
        pass

    def _serve(self, body: bool):
        prefix = f"/datasets/{REPO}/resolve/main/"
        path = self.path.split("?")[0]
        self.requests.append((self.command, path))
        data = self.files.get(path[len(prefix):]) if path.startswith(prefix) else None
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._serve(False)

    def do_GET(self):
        self._serve(True)


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    files = {}
    src = tmp_path / "src"
    for name, n in [("fineweb_val_000000.bin", 300), ("fineweb_train_000000.bin", 500),
                    ("fineweb_train_000001.bin", 400), ("fineweb_train_000002.bin", 100)]:
        write_shard(src / name, np.arange(n) % 1024)
        files[f"datasets/datasets/fineweb10B_sp1024/{name}"] = (src / name).read_bytes()
    if SHARED_TOK.is_file():
        files["datasets/tokenizers/fineweb_1024_bpe.model"] = SHARED_TOK.read_bytes()
    else:  # any valid SentencePiece model works for the downloader
        import io

        import sentencepiece as spm
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world"] * 50), model_writer=buf,
                                       vocab_size=20, model_type="bpe", minloglevel=2)
        files["datasets/tokenizers/fineweb_1024_bpe.model"] = buf.getvalue()
    handler = type("Handler", (_FakeHub,), {"files": files, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "out"
    server.shutdown()
    server.server_close()


def _get(handler, needle=""):
    return [p for m, p in handler.requests if m == "GET" and needle in p]


def _dl(endpoint, out, **kw):
    logs = []
    paths = download_fineweb(train_shards=kw.pop("train_shards", 2), out_dir=str(out), repo_id=REPO,
                             endpoint=endpoint, log=logs.append, token=False, **kw)
    return paths, logs


def test_download_without_manifest_then_resume(hub):
    handler, endpoint, out = hub
    paths, logs = _dl(endpoint, out)
    rel = [os.path.relpath(p, out) for p in paths]
    assert rel == ["datasets/fineweb10B_sp1024/fineweb_train_000000.bin",
                   "datasets/fineweb10B_sp1024/fineweb_train_000001.bin",
                   "datasets/fineweb10B_sp1024/fineweb_val_000000.bin",
                   "tokenizers/fineweb_1024_bpe.model"]
    assert any("no datasets/manifest.json" in s for s in logs)
    assert load_shard(paths[1]).tolist() == list(range(400))
    assert len(_get(handler, ".bin")) == 3 and len(_get(handler, ".model")) == 1
    assert sorted(os.listdir(out)) == ["datasets", "tokenizers"]  # temp cache removed
    handler.requests.clear()
    again, logs = _dl(endpoint, out)
    assert again == paths
    assert _get(handler, ".bin") == [] and _get(handler, ".model") == []
    assert "0 downloaded, 4 already present" in logs[-1]


def test_manifest_sizes_and_partial_resume(hub):
    handler, endpoint, out = hub
    ds = "datasets/datasets/fineweb10B_sp1024/"
    entries = [{"path": p, "size": len(b)} for p, b in handler.files.items()]
    handler.files["datasets/manifest.json"] = json.dumps({"files": entries}).encode()
    paths, _ = _dl(endpoint, out, train_shards=3)
    assert len(paths) == 5
    # a truncated local file is detected and fetched again; intact ones are not
    victim = out / "datasets/fineweb10B_sp1024/fineweb_train_000002.bin"
    victim.write_bytes(victim.read_bytes()[:-2])
    handler.requests.clear()
    _dl(endpoint, out, train_shards=3)
    assert _get(handler, ".bin") == [f"/datasets/{REPO}/resolve/main/{ds}fineweb_train_000002.bin"]
    with pytest.raises(FinewebError, match="4 train shards requested but the manifest lists 3"):
        _dl(endpoint, out, train_shards=4)


def test_corrupt_served_file_is_rejected(hub):
    handler, endpoint, out = hub
    key = "datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin"
    bad = bytearray(handler.files[key])
    bad[0:4] = (999).to_bytes(4, "little")
    handler.files[key] = bytes(bad)
    with pytest.raises(FinewebError) as ei:
        _dl(endpoint, out)
    msg = str(ei.value)
    assert "fineweb_train_000001.bin" in msg and "bad magic 999" in msg and "corrupt" in msg
    assert not (out / "datasets/fineweb10B_sp1024/fineweb_train_000001.bin").exists()
    assert not list(out.rglob("*.part"))


def test_missing_remote_file_is_clear_error(hub):
    handler, endpoint, out = hub
    with pytest.raises(FinewebError, match="fineweb_train_000003.bin from someone/pg-fake failed"):
        _dl(endpoint, out, train_shards=4)


def test_inspect_shard(tmp_path):
    p = tmp_path / "s.bin"
    write_shard(p, [1, 5, 6, 7])
    text = inspect_shard(str(p), n=2)
    assert "count=4" in text and "first 2 tokens: [1, 5]" in text and "1,032 bytes" in text
    p.write_bytes(p.read_bytes()[:-1])
    assert "INVALID" in inspect_shard(str(p)) and "size mismatch" in inspect_shard(str(p))
    if SHARED_TOK.is_file():
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(SHARED_TOK))
        q = tmp_path / "t.bin"
        write_shard(q, [1] + sp.encode("Hello world"))
        text = inspect_shard(str(q), str(SHARED_TOK))
        assert "text: 'Hello world'" in text and "documents (BOS count): 1" in text
