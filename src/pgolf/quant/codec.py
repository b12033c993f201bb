"""Byte layout of integer codes (one per byte or bit-packed) and the pluggable compressors."""

import lzma
import zlib

import numpy as np

COMPRESSORS: tuple[str, ...] = ("zlib", "lzma", "zstd", "brotli")
INT_LAYOUTS: tuple[str, ...] = ("bytes", "packed")


class CodecError(ValueError):
    """Unknown compressor/layout, missing optional library, or undecodable bytes."""


def pack_codes(q: np.ndarray, bits: int) -> bytes:
    """Bit-pack signed codes in [-(2^(b-1)-1), 2^(b-1)-1] as unsigned b-bit fields, little-endian.

    Eight codes fill one b-byte group (e.g. 4 int6 codes per 3 bytes).
    """
    qmax = (1 << (bits - 1)) - 1
    u = (q.reshape(-1).astype(np.int16) + qmax).astype(np.uint64)
    n = u.size
    u = np.concatenate([u, np.zeros((-n) % 8, dtype=np.uint64)]).reshape(-1, 8)
    word = np.zeros(u.shape[0], dtype=np.uint64)
    for k in range(8):
        word |= u[:, k] << np.uint64(bits * k)
    groups = word.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :bits]
    return groups.tobytes()[: (n * bits + 7) // 8]


def unpack_codes(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_codes: `count` int8 codes."""
    qmax = (1 << (bits - 1)) - 1
    ngroups = (count + 7) // 8
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size != (count * bits + 7) // 8:
        raise CodecError(f"packed int{bits} stream holds {raw.size} bytes, expected "
                         f"{(count * bits + 7) // 8} for {count} codes")
    g = np.zeros((ngroups, 8), dtype=np.uint8)
    flat = np.zeros(ngroups * bits, dtype=np.uint8)
    flat[: raw.size] = raw
    g[:, :bits] = flat.reshape(ngroups, bits)
    word = g.view("<u8").reshape(-1)
    mask = np.uint64((1 << bits) - 1)
    u = np.stack([(word >> np.uint64(bits * k)) & mask for k in range(8)], axis=1).reshape(-1)
    return (u[:count].astype(np.int16) - qmax).astype(np.int8)


def _codec_module(name: str):
    """Lazy import of an optional compression library with an actionable error."""
    try:
        if name == "zstd":
            import zstandard
            return zstandard
        import brotli
        return brotli
    except ImportError:
        pkg = "zstandard" if name == "zstd" else "brotli"
        raise CodecError(f"compressor {name!r} needs the optional package {pkg}: "
                         f"pip install {pkg}, or set quant.compressor=lzma") from None


def _codec_lzma_filters(level: int) -> list[dict]:
    # Raw LZMA2 (no .xz container) saves ~60 bytes; the preset travels in the header.
    return [{"id": lzma.FILTER_LZMA2, "preset": max(0, min(level, 9))}]


def compress_bytes(data: bytes, compressor: str, level: int) -> bytes:
    """Deterministic compression; level is clamped to the compressor's range
    (zlib 0..9, lzma preset 0..9, zstd 1..22, brotli quality 0..11)."""
    if compressor == "zlib":
        return zlib.compress(data, max(0, min(level, 9)))
    if compressor == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_codec_lzma_filters(level))
    if compressor == "zstd":
        zstd = _codec_module("zstd")
        return zstd.ZstdCompressor(level=max(1, min(level, 22)), write_content_size=True).compress(data)
    if compressor == "brotli":
        return _codec_module("brotli").compress(data, quality=max(0, min(level, 11)))
    raise CodecError(f"unknown compressor {compressor!r}; use one of {', '.join(COMPRESSORS)}")


def decompress_bytes(data: bytes, compressor: str, level: int) -> bytes:
    """Inverse of compress_bytes (level is needed only by raw LZMA)."""
    if compressor == "zlib":
        return zlib.decompress(data)
    if compressor == "lzma":
        return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_codec_lzma_filters(level))
    if compressor == "zstd":
        return _codec_module("zstd").ZstdDecompressor().decompress(data)
    if compressor == "brotli":
        return _codec_module("brotli").decompress(data)
    raise CodecError(f"unknown compressor {compressor!r}; use one of {', '.join(COMPRESSORS)}")
