import sys

import numpy as np
import pytest

from pgolf.quant.codec import CodecError, compress_bytes, decompress_bytes, pack_codes, unpack_codes


@pytest.mark.parametrize("bits", [5, 6, 7, 8])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 13, 1000])
def test_pack_roundtrip(bits, n):
    qmax = (1 << (bits - 1)) - 1
    q = np.random.default_rng(bits * 1000 + n).integers(-qmax, qmax + 1, n).astype(np.int8)
    data = pack_codes(q, bits)
    assert len(data) == (n * bits + 7) // 8
    assert np.array_equal(unpack_codes(data, bits, n), q)


def test_int6_packs_four_codes_in_three_bytes():
    q = np.array([-31, 0, 31, 5], dtype=np.int8)
    assert len(pack_codes(q, 6)) == 3
    with pytest.raises(CodecError, match="expected 3"):
        unpack_codes(b"\x00\x00", 6, 4)


@pytest.mark.parametrize("name", ["zlib", "lzma"])
def test_compressors_roundtrip_deterministic(name):
    data = bytes(np.random.default_rng(0).integers(0, 8, 5000).astype(np.uint8))
    a, b = compress_bytes(data, name, 6), compress_bytes(data, name, 6)
    assert a == b and len(a) < len(data)
    assert decompress_bytes(a, name, 6) == data


@pytest.mark.parametrize("name", ["zstd", "brotli"])
def test_optional_compressors(name):
    _available(name)  # skips with its reason (pip install .[test] brings both)
    data = bytes(np.random.default_rng(2).integers(0, 8, 5000).astype(np.uint8))
    blob = compress_bytes(data, name, 9)
    assert blob == compress_bytes(data, name, 9) and len(blob) < len(data)
    assert decompress_bytes(blob, name, 9) == data


@pytest.mark.parametrize("name", ["zstd", "brotli"])
def test_missing_optional_compressor_says_what_to_install(name, monkeypatch):
    pkg = {"zstd": "zstandard", "brotli": "brotli"}[name]
    monkeypatch.setitem(sys.modules, pkg, None)  # import then raises ImportError
    with pytest.raises(CodecError, match=f"pip install {pkg}"):
        compress_bytes(b"pgolf", name, 9)


def test_unknown_compressor():
    with pytest.raises(CodecError, match="unknown compressor 'gzip'"):
        compress_bytes(b"x", "gzip", 9)


def _available(name):
    pkg = {"zstd": "zstandard", "brotli": "brotli"}.get(name)
    if pkg:
        try:
            __import__(pkg)
        except ImportError:
            pytest.skip(f"{name} needs the optional package {pkg} (pip install {pkg})")


@pytest.mark.parametrize("name", ["zlib", "lzma", "zstd", "brotli"])
def test_decompress_stops_at_max_size_and_spots_cut_or_padded_streams(name):
    _available(name)
    data = bytes(np.random.default_rng(1).integers(0, 4, 3_000_000).astype(np.uint8))
    blob = compress_bytes(data, name, 6)
    assert decompress_bytes(blob, name, 6, max_size=len(data)) == data
    with pytest.raises(CodecError, match=f"{name} payload decompresses past the 2,999,999 bytes allowed"):
        decompress_bytes(blob, name, 6, max_size=len(data) - 1)
    with pytest.raises(CodecError, match="truncated|undecodable"):
        decompress_bytes(blob[:len(blob) // 2], name, 6)
    with pytest.raises(CodecError, match="after its end|undecodable"):
        decompress_bytes(blob + b"\x00junk", name, 6)
