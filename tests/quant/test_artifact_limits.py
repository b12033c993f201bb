"""Hostile artifacts: what a file makes pgolf allocate is bounded by the body size its header
declares, that by the caps, and every refusal is one line naming the file."""

import errno
import hashlib
import json
import lzma
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest
import torch

from pgolf.atomic import AtomicWriteError
from pgolf.config_tree import QuantConfig
from pgolf.quant.artifact import (_ART_PREFIX, ART_MAX_BODY_BYTES, ARTIFACT_MAGIC, ArtifactError, artifact_body_cap,
                                  pack_artifact, read_artifact, read_artifact_header, unpack_artifact, write_artifact)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _faults import full_disk_after  # noqa: E402

BOMB_BYTES = 200 << 20  # 200 MB of zeros: a few hundred KB at most once compressed
PEAK_LIMIT = 50 << 20
OPTIONAL = {"zstd": "zstandard", "brotli": "brotli"}


def _compressor(name: str):
    """(compress(chunk), finish()) of a streaming compressor; the bomb is never held whole."""
    if name in OPTIONAL:
        try:
            mod = __import__(OPTIONAL[name])
        except ImportError:
            pytest.skip(f"{name} bomb needs the optional package {OPTIONAL[name]} (pip install {OPTIONAL[name]})")
        c = mod.ZstdCompressor(level=3).compressobj() if name == "zstd" else mod.Compressor(quality=5)
        return (c.compress, c.flush) if name == "zstd" else (c.process, c.finish)
    if name == "zlib":
        c = zlib.compressobj(9)
    else:
        c = lzma.LZMACompressor(format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 0}])
    return c.compress, c.flush


_BOMBS: dict[str, bytes] = {}


def _bomb(name: str) -> bytes:
    if name not in _BOMBS:
        compress, finish = _compressor(name)
        zeros = bytes(1 << 20)
        _BOMBS[name] = b"".join(compress(zeros) for _ in range(BOMB_BYTES >> 20)) + finish()
    return _BOMBS[name]


def _frame(comp: bytes, compressor: str, level: int, body_bytes: int | None, version: int = 2) -> bytes:
    """A correctly framed, checksummed artifact around any compressed payload."""
    header = {"compressor": compressor, "level": level, "config_hash": "", "meta": {}}
    if body_bytes is not None:
        header["body_bytes"] = body_bytes
    hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    prefix = _ART_PREFIX.pack(ARTIFACT_MAGIC, version, len(hb), zlib.crc32(hb), len(comp),
                              hashlib.sha256(comp).digest())
    return prefix + hb + comp


# case: (version, declared body size, the reader's cap, what the refusal says)
BOMB_CASES = {
    "declared-small": (2, 4096, None, r"decompresses past the 4,096 bytes|undecodable zstd"),
    "declared-huge": (2, 10**12, None, r"over the [\d,]+ bytes pgolf's sanity cap allows"),
    "over-model-cap": (2, 64 << 20, artifact_body_cap(1000), r"over the [\d,]+ bytes the model it is read for"),
    "v1-model-cap": (1, None, artifact_body_cap(1000), r"decompresses past|undecodable zstd"),
}


@pytest.mark.parametrize("case", sorted(BOMB_CASES))
@pytest.mark.parametrize("compressor", ["zlib", "lzma", "zstd", "brotli"])
def test_decompression_bomb_is_refused_in_little_memory(compressor, case):
    version, declared, cap, refusal = BOMB_CASES[case]
    level = 0 if compressor == "lzma" else 9
    comp = _bomb(compressor)
    assert len(comp) < BOMB_BYTES // 200
    blob = _frame(comp, compressor, level, declared, version)
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError, match=refusal) as e:
            unpack_artifact(blob, source="bomb.ptz", max_body_bytes=cap)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(e.value).startswith("bomb.ptz: ") and "\n" not in str(e.value)
    assert peak < PEAK_LIMIT, f"{compressor} bomb cost {peak / 2**20:.0f} MiB before refusal"


def _sd():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(48, 32, generator=g), "b": torch.randn(300, generator=g),
            "n": torch.tensor([3, 4], dtype=torch.int64)}


def _q(**kw):
    return QuantConfig(**{"matrix_bits": 6, "small_numel": 256, "compressor": "zlib", "level": 9, **kw})


def _reframe(blob: bytes, edit) -> bytes:
    """blob with its header JSON (and optionally its body) edited, checksums redone."""
    _, version, hlen, _, _, _ = _ART_PREFIX.unpack_from(blob)
    header = json.loads(blob[_ART_PREFIX.size:_ART_PREFIX.size + hlen])
    body = zlib.decompress(blob[_ART_PREFIX.size + hlen:])
    version, body = edit(header, body, version)
    return _frame(zlib.compress(body), header["compressor"], header["level"], header.get("body_bytes"), version)


def read_header_of(blob: bytes) -> dict:
    _, _, hlen, _, _, _ = _ART_PREFIX.unpack_from(blob)
    return json.loads(blob[_ART_PREFIX.size:_ART_PREFIX.size + hlen])


def test_header_declares_the_body_size():
    blob = pack_artifact(_sd(), _q())
    header = read_header_of(blob)
    _, full = unpack_artifact(blob)
    assert header["body_bytes"] == full["body_bytes"] > 0
    assert full["version"] == 2


def test_version1_artifacts_still_read_under_the_cap():
    blob = pack_artifact(_sd(), _q())

    def to_v1(header, body, version):
        del header["body_bytes"]
        return 1, body
    old = _reframe(blob, to_v1)
    sd, header = unpack_artifact(old)
    ref, _ = unpack_artifact(blob)
    assert header["version"] == 1 and all(torch.equal(sd[k], ref[k]) for k in ref)
    with pytest.raises(ArtifactError, match="decompresses past the 100 bytes"):
        unpack_artifact(old, max_body_bytes=100)


def test_body_must_be_exactly_the_declared_size():
    blob = pack_artifact(_sd(), _q())

    def lie(header, body, version):
        header["body_bytes"] += 10
        return version, body
    with pytest.raises(ArtifactError, match=r"^x.ptz: body is [\d,]+ bytes, the header declares"):
        unpack_artifact(_reframe(blob, lie), source="x.ptz")


def _with_manifest(tensors: list, data: bytes = b"") -> bytes:
    mj = json.dumps({"tensors": tensors}).encode()
    body = len(mj).to_bytes(4, "little") + mj + data
    return _frame(zlib.compress(body), "zlib", 9, len(body))


HOSTILE_MANIFESTS = {
    "huge-shape-no-bytes": ([{"name": "w", "shape": [100000, 100000], "dtype": "float32", "kind": "raw",
                              "method": "raw", "bits": 16, "d": [0, 0]}], b"", "do not match its shape"),
    "int-without-shape": ([{"name": "w", "shape": [], "dtype": "float32", "kind": "int", "layout": "bytes",
                            "method": "x", "bits": 6, "q": [0, 1], "s": [1, 0]}], b"\x00", "bad int layout"),
    "dtype-is-a-function": ([{"name": "w", "shape": [1], "dtype": "save", "kind": "raw", "method": "raw",
                              "bits": 16, "d": [0, 1]}], b"\x00", "unknown dtype"),
    "range-past-the-end": ([{"name": "w", "shape": [4], "dtype": "float32", "kind": "fp16", "method": "fp16",
                             "bits": 16, "d": [4, 8]}], bytes(8), "do not match its shape"),
    "unaccounted-bytes": ([], bytes(1000), "accounts for 0 data bytes"),
    "not-a-list": ({"w": 1}, b"", "not a list"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_hostile_manifest_is_refused_before_allocating(case):
    tensors, data, why = HOSTILE_MANIFESTS[case]
    with pytest.raises(ArtifactError, match=f"^m.ptz: undecodable payload .*{why}") as e:
        unpack_artifact(_with_manifest(tensors, data), source="m.ptz")
    assert "\n" not in str(e.value)


def test_oversized_file_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "model.ptz"
    path.write_bytes(pack_artifact(_sd(), _q()))
    monkeypatch.setattr("pgolf.quant.artifact.ART_MAX_FILE_BYTES", 100)
    monkeypatch.setattr("pathlib.Path.read_bytes", lambda self: pytest.fail("read a file over the cap"))
    with pytest.raises(ArtifactError, match=r"model.ptz: [\d,]+ bytes, larger than any artifact"):
        read_artifact(path)


def test_read_header_only(tmp_path):
    blob = pack_artifact(_sd(), _q(), config_hash="h", meta={"config_toml": "x = 1"})
    path = write_artifact(tmp_path / "model.ptz", blob)
    header = read_artifact_header(path)
    assert header["config_hash"] == "h" and header["meta"]["config_toml"] == "x = 1"
    assert "manifest" not in header


def test_body_cap_covers_real_models():
    sd = {"w": torch.randn(64, 64), "emb": torch.randn(100, 32), "v": torch.randn(3000)}
    n = sum(t.numel() for t in sd.values())
    for bits in (6, 8, 16):
        blob = pack_artifact(sd, _q(matrix_bits=bits, embed_bits=bits))
        _, header = unpack_artifact(blob, max_body_bytes=artifact_body_cap(n))
        assert header["body_bytes"] <= artifact_body_cap(n) - (1 << 20) + 4096
    assert artifact_body_cap(26_928_220) < ART_MAX_BODY_BYTES




def test_disk_full_keeps_the_previous_artifact(tmp_path, monkeypatch):
    path = tmp_path / "model.ptz"
    old = pack_artifact(_sd(), _q())
    write_artifact(path, old)
    monkeypatch.setattr("pgolf.atomic._atomic_open", full_disk_after(1000))
    with pytest.raises(AtomicWriteError, match=f"^cannot write {path}: no space left on device") as e:
        write_artifact(path, pack_artifact(_sd(), _q(level=1)), overwrite=True)
    assert "\n" not in str(e.value) and e.value.errno == errno.ENOSPC
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ptz"]
    with pytest.raises(AtomicWriteError, match="no space left"):
        write_artifact(tmp_path / "new.ptz", old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ptz"]


def test_refusals_are_pgolf_errors():
    from pgolf.errors import PgolfError
    from pgolf.quant.artifact import OverBudgetError
    from pgolf.quant.codec import CodecError
    for cls in (ArtifactError, OverBudgetError, CodecError, AtomicWriteError):
        assert issubclass(cls, PgolfError)
    assert issubclass(ArtifactError, ValueError) and issubclass(AtomicWriteError, RuntimeError)  # the CLI's catch
