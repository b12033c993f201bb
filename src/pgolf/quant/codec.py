"""Byte layout of integer codes (one per byte or bit-packed) and the pluggable compressors."""

import lzma
import zlib

import numpy as np

from pgolf.errors import PgolfError

COMPRESSORS: tuple[str, ...] = ("zlib", "lzma", "zstd", "brotli")
INT_LAYOUTS: tuple[str, ...] = ("bytes", "packed")
CODEC_CHUNK = 1 << 20  # decompressed bytes per step: what a refused payload can cost beyond its limit


class CodecError(PgolfError, ValueError):
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


def _module(name: str):
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


def _lzma_filters(level: int) -> list[dict]:
    # Raw LZMA2 (no .xz container) saves ~60 bytes; the preset travels in the header.
    return [{"id": lzma.FILTER_LZMA2, "preset": max(0, min(level, 9))}]


def compress_bytes(data: bytes, compressor: str, level: int) -> bytes:
    """Deterministic compression; level is clamped to the compressor's range
    (zlib 0..9, lzma preset 0..9, zstd 1..22, brotli quality 0..11)."""
    if compressor == "zlib":
        return zlib.compress(data, max(0, min(level, 9)))
    if compressor == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(level))
    if compressor == "zstd":
        zstd = _module("zstd")
        return zstd.ZstdCompressor(level=max(1, min(level, 22)), write_content_size=True).compress(data)
    if compressor == "brotli":
        return _module("brotli").compress(data, quality=max(0, min(level, 11)))
    raise CodecError(f"unknown compressor {compressor!r}; use one of {', '.join(COMPRESSORS)}")


def brotli_compress(data: bytes, quality: int = 11, lgwin: int = 22) -> bytes:
    """brotli with an explicit window (lgwin 24 = 16 MiB: the pergroup remainder's)."""
    return _module("brotli").compress(data, quality=quality, lgwin=lgwin)


def decompress_bytes(data: bytes, compressor: str, level: int, max_size: int | None = None) -> bytes:
    """Inverse of compress_bytes (level is needed only by raw LZMA).

    Streams in chunks of at most 1 MiB and stops once the output passes max_size, so a
    small hostile payload cannot expand to gigabytes before it is refused.
    """
    if compressor not in COMPRESSORS:
        raise CodecError(f"unknown compressor {compressor!r}; use one of {', '.join(COMPRESSORS)}")
    out = bytearray()
    try:
        for chunk in _chunks(data, compressor, level, max_size):
            out += chunk
            if max_size is not None and len(out) > max_size:
                raise CodecError(f"{compressor} payload decompresses past the {max_size:,} bytes allowed "
                                 "for it (a corrupt or hostile file); re-export it with pgolf")
    except (CodecError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - each library has its own error type
        raise CodecError(f"undecodable {compressor} payload ({type(e).__name__}); re-copy or re-export it") from None
    return bytes(out)


def _chunks(data: bytes, compressor: str, level: int, max_size: int | None):
    """Decompressed output in chunks of about CODEC_CHUNK bytes; raises on a truncated stream."""
    if compressor == "zlib":
        d = zlib.decompressobj()
        buf = data
        while not d.eof:
            chunk = d.decompress(buf, CODEC_CHUNK)
            if not chunk and len(d.unconsumed_tail) == len(buf):
                break
            buf = d.unconsumed_tail
            yield chunk
        done, extra = d.eof, d.unused_data
    elif compressor == "lzma":
        d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(level))
        yield d.decompress(data, CODEC_CHUNK)
        while not d.eof and not d.needs_input:
            yield d.decompress(b"", CODEC_CHUNK)
        done, extra = d.eof, d.unused_data
    elif compressor == "zstd":
        zstd = _module("zstd")
        # A frame may claim a window of up to 2 GiB; none needs more than its output.
        window = {} if max_size is None else {"max_window_size": 1 << min(max(10, max_size.bit_length()), 27)}
        declared, total = zstd.get_frame_parameters(data).content_size, 0
        with zstd.ZstdDecompressor(**window).stream_reader(data) as r:
            while chunk := r.read(CODEC_CHUNK):
                total += len(chunk)
                yield chunk
        # The reader ends quietly on a cut frame; the size compress_bytes writes tells.
        done, extra = declared in (0, total), b""
    else:
        d = _module("brotli").Decompressor()
        try:
            chunk = d.process(data, output_buffer_limit=CODEC_CHUNK)
        except TypeError:
            raise CodecError("reading brotli safely needs brotli >= 1.2 (bounded output): "
                             "pip install -U brotli, or set quant.compressor=lzma") from None
        yield chunk
        while not d.is_finished() and (chunk := d.process(b"", output_buffer_limit=CODEC_CHUNK)):
            yield chunk
        done, extra = d.is_finished(), b""
    if not done:
        raise CodecError(f"{compressor} payload is truncated; re-copy or re-export it")
    if extra:
        raise CodecError(f"{compressor} payload has {len(extra)} bytes after its end; re-copy or re-export it")
