"""The model artifact: quantized state dict -> self-describing, checksummed, compressed bytes.

Layout (little-endian):
  fixed prefix (56 bytes): magic b"PGOLF\\x00" | version u16 | header_len u32 |
                           header_crc32 u32 | payload_len u64 | payload_sha256 32s
  header: compact JSON {compressor, level, body_bytes, config_hash, meta} (header_len bytes)
  payload: compressed body (payload_len bytes)
Version 2 declares body_bytes, the uncompressed size: decompression stops there, and the
declared size itself must fit the reader's cap (artifact_body_cap of the model it expects,
and ART_MAX_BODY_BYTES always), so a small file cannot expand to gigabytes. Version 1
files, without it, are still read under the cap alone.
Body (before compression): manifest_len u32 | manifest JSON | data. The manifest lists each
tensor (name, shape, dtype, kind, method, bits, layout, byte ranges); the data groups all
integer codes first, then per-row scales, then fp16 tensors, then raw tensors, because
similar bytes side by side compress better. Bytes are a pure function of the inputs.
Optional per-entry layout keys (absent = the original layout, so older files read as before):
"order": "columns" stores a matrix's codes transposed; "shuffle": 1 stores its fp16 bytes as
all low bytes then all high bytes. LQER factors (pgolf.quant.lqer) and int8 gate rows are
ordinary int entries, told apart by their method; the reader checks that a tensor's factors
fit its shape before it multiplies them.
"""

import hashlib
import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from pgolf.atomic import atomic_write
from pgolf.config_tree import QuantConfig
from pgolf.errors import PgolfError
from pgolf.progress import Progress
from pgolf.quant.codec import (COMPRESSORS, INT_LAYOUTS, CodecError, compress_bytes, decompress_bytes, pack_codes,
                               unpack_codes)
from pgolf.quant.pergroup import compress_pergroup, decompress_pergroup
from pgolf.quant.policy import dequantize_state_dict, quantize_state_dict

ARTIFACT_MAGIC = b"PGOLF\x00"
ARTIFACT_VERSION = 2
_ART_READABLE = (1, 2)
_ART_PREFIX = struct.Struct("<6sHIIQ32s")
# Byte-per-code beats 6-bit packing after LZMA: LZMA's literal coder models whole bytes,
# and packing scatters each code over two of them.
DEFAULT_INT_LAYOUT = "bytes"
CHALLENGE_LIMIT_BYTES = 16_000_000
# Sanity caps whatever the caller expects: a 16 MB submission holds well under 100 M
# weights, i.e. well under 256 MiB of uncompressed body; the file can only be smaller.
ART_MAX_BODY_BYTES = 256 << 20
ART_MAX_FILE_BYTES = ART_MAX_BODY_BYTES + (1 << 20)
ARTIFACT_COMPRESSORS = (*COMPRESSORS, "pergroup")  # pergroup: pgolf.quant.pergroup, an optional part


class ArtifactError(PgolfError, ValueError):
    """An artifact that cannot be read or written (one line, naming the file)."""


class OverBudgetError(PgolfError, ValueError):
    """Model + code bytes exceed the challenge limit."""


def _tensor_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _tensor_from(b: bytes, dtype: str, shape: list[int]) -> Tensor:
    dt = getattr(torch, dtype)
    if not b:
        return torch.empty(shape, dtype=dt)
    return torch.frombuffer(bytearray(b), dtype=torch.uint8).view(dt).reshape(shape).clone()


def shuffle_fp16_bytes(b: bytes, inverse: bool = False) -> bytes:
    """fp16 bytes -> low bytes then high bytes (or back): exponents sit together for the compressor."""
    a = np.frombuffer(b, dtype=np.uint8)
    return (a.reshape(2, -1).T if inverse else a.reshape(-1, 2).T).tobytes()


def _codes_bytes(q: np.ndarray, bits: int, packed: bool, columns: bool) -> bytes:
    if columns:
        q = np.ascontiguousarray(q.reshape(-1, q.shape[-1]).T)
    return pack_codes(q, bits) if packed else q.tobytes()


def serialize_payload(payload: dict[str, dict[str, Any]], int_layout: str = DEFAULT_INT_LAYOUT,
                      code_order: str = "rows", fp16_layout: str = "plain") -> bytes:
    """Quantized payload (pgolf.quant.policy) -> uncompressed body bytes."""
    if code_order not in ("rows", "columns") or fp16_layout not in ("plain", "shuffled"):
        raise ArtifactError(f"code order {code_order!r} / fp16 layout {fp16_layout!r} unknown; "
                            "use rows|columns and plain|shuffled")
    shuffle = fp16_layout == "shuffled"
    if int_layout not in INT_LAYOUTS:
        raise ArtifactError(f"int layout {int_layout!r} unknown; use one of {', '.join(INT_LAYOUTS)}")
    regions: dict[str, list[bytes]] = {"q": [], "s": [], "d": [], "r": []}
    sizes = {k: 0 for k in regions}
    manifest = []

    def put(region: str, b: bytes) -> list[int]:
        regions[region].append(b)
        sizes[region] += len(b)
        return [sizes[region] - len(b), len(b)]

    for name, e in payload.items():
        m = {"name": name, "shape": e["shape"], "dtype": e["dtype"], "kind": e["kind"],
             "method": e.get("method", e["kind"]), "bits": e.get("bits", 16)}
        if e["kind"] == "int":
            q = e["q"].numpy()
            packed = int_layout == "packed" and m["bits"] < 8
            columns = code_order == "columns" and q.ndim >= 2
            m["layout"] = "packed" if packed else "bytes"
            m["q"] = put("q", _codes_bytes(q, m["bits"], packed, columns))
            sb = _tensor_bytes(e["scale"].to(torch.float16))
            m["s"] = put("s", shuffle_fp16_bytes(sb) if shuffle else sb)
            if columns:
                m["order"] = "columns"
        else:
            db = _tensor_bytes(e["data"])
            fp16 = e["kind"] == "fp16"
            m["d"] = put("d" if fp16 else "r", shuffle_fp16_bytes(db) if shuffle and fp16 else db)
        if shuffle and (e["kind"] == "int" or e["kind"] == "fp16"):
            m["shuffle"] = 1
        manifest.append(m)
    base = {"q": 0, "s": sizes["q"], "d": sizes["q"] + sizes["s"]}
    base["r"] = base["d"] + sizes["d"]
    for m in manifest:
        for key in ("q", "s", "d"):
            if key in m:
                region = "r" if m["kind"] == "raw" else key
                m[key][0] += base[region]
    mj = json.dumps({"tensors": manifest}, sort_keys=True, separators=(",", ":")).encode()
    data = b"".join(b"".join(regions[k]) for k in ("q", "s", "d", "r"))
    return struct.pack("<I", len(mj)) + mj + data


def deserialize_payload(body: bytes) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Inverse of serialize_payload -> (payload, manifest).

    Every entry's byte ranges must match its shape exactly and lie inside the body, so what
    a hostile manifest makes us allocate stays proportional to the bytes really there.
    """
    (mlen,) = struct.unpack_from("<I", body, 0)
    if 4 + mlen > len(body):
        raise ValueError(f"manifest length {mlen} runs past the {len(body)}-byte body")
    manifest = json.loads(bytes(body[4:4 + mlen]).decode())["tensors"]
    data = memoryview(body)[4 + mlen:]
    if not isinstance(manifest, list):
        raise ValueError("manifest tensors is not a list")
    used = sum(_check_entry(m, len(data)) for m in manifest)
    if used != len(data):
        raise ValueError(f"the manifest accounts for {used} data bytes, the body holds {len(data)}")
    payload: dict[str, dict[str, Any]] = {}
    for m in manifest:
        e: dict[str, Any] = {"kind": m["kind"], "shape": m["shape"], "dtype": m["dtype"],
                             "bits": m["bits"], "method": m["method"]}
        unshuffle = (lambda b: shuffle_fp16_bytes(b, inverse=True)) if m.get("shuffle") else (lambda b: b)
        if m["kind"] == "int":
            off, n = m["q"]
            count = math.prod(m["shape"])
            raw = bytes(data[off:off + n])
            q = (unpack_codes(raw, m["bits"], count) if m["layout"] == "packed"
                 else np.frombuffer(raw, dtype=np.int8))
            cols = m["shape"][-1]
            rows = count // cols if cols else 0
            if m.get("order") == "columns":
                q = q.reshape(cols, rows).T
            e["q"] = torch.from_numpy(np.ascontiguousarray(q).copy()).reshape(m["shape"])
            e["scale"] = _tensor_from(unshuffle(bytes(data[m["s"][0]:sum(m["s"])])), "float16", [rows])
        else:
            dt = "float16" if m["kind"] == "fp16" else m["dtype"]
            raw = bytes(data[m["d"][0]:sum(m["d"])])
            e["data"] = _tensor_from(unshuffle(raw) if m["kind"] == "fp16" else raw, dt, m["shape"])
        payload[m["name"]] = e
    return payload, manifest


def _check_entry(m: Any, data_len: int) -> int:
    """Validate one manifest entry against the data section; return the bytes it uses."""
    if not isinstance(m, dict) or not isinstance(m.get("name"), str):
        raise ValueError("manifest entry without a name")
    shape, kind, bits = m.get("shape"), m.get("kind"), m.get("bits")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"tensor {m['name']!r}: bad shape")
    if not isinstance(getattr(torch, str(m.get("dtype")), None), torch.dtype):
        raise ValueError(f"tensor {m['name']!r}: unknown dtype")
    count = math.prod(shape)
    if m.get("order", "rows") not in ("rows", "columns") or m.get("shuffle", 0) not in (0, 1):
        raise ValueError(f"tensor {m['name']!r}: unknown order/shuffle layout")
    if kind == "int":
        if not shape or type(bits) is not int or not 1 <= bits <= 8 or m.get("layout") not in INT_LAYOUTS:
            raise ValueError(f"tensor {m['name']!r}: bad int layout")
        want = {"q": (count * bits + 7) // 8 if m["layout"] == "packed" else count,
                "s": 2 * (count // shape[-1] if shape[-1] else 0)}
    elif kind in ("fp16", "raw"):
        want = {"d": count * (2 if kind == "fp16" else getattr(torch, m["dtype"]).itemsize)}
    else:
        raise ValueError(f"tensor {m['name']!r}: unknown kind {kind!r}")
    for key, n in want.items():
        r = m.get(key)
        if not (isinstance(r, list) and len(r) == 2 and all(type(v) is int for v in r)
                and r[1] == n and 0 <= r[0] <= data_len - n):
            raise ValueError(f"tensor {m['name']!r}: its {key} bytes do not match its shape")
    return sum(want.values())


def _body(payload: dict[str, dict[str, Any]], qcfg: QuantConfig, int_layout: str | None = None) -> bytes:
    return serialize_payload(payload, int_layout or DEFAULT_INT_LAYOUT, qcfg.code_order, qcfg.fp16_layout)


def group_byte_report(payload: dict[str, dict[str, Any]], qcfg: QuantConfig) -> dict[str, dict[str, int]]:
    """Bytes per tensor group: its body bytes, and its bytes compressed alone with the
    artifact's compressor (groups compressed together come out a little smaller)."""
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for name, e in payload.items():
        groups.setdefault(e.get("group", e.get("category", "other")), {})[name] = e
    out = {}
    for g, part in sorted(groups.items()):
        body = _body(part, qcfg)
        out[g] = {"tensors": len(part), "params": sum(math.prod(e["shape"]) for e in part.values()),
                  "body_bytes": len(body), "compressed_bytes": len(_compress(body, qcfg))}
    return out


def _compress(body: bytes, qcfg: QuantConfig) -> bytes:
    if qcfg.compressor == "pergroup":
        return compress_pergroup(body, qcfg.level, qcfg.compressor_fallback)
    return compress_bytes(body, qcfg.compressor, qcfg.level)


def build_artifact(state_dict: dict[str, Tensor], qcfg: QuantConfig, config_hash: str = "",
                   meta: dict[str, Any] | None = None, int_layout: str | None = None,
                   hessians: dict[str, Tensor] | None = None, payload_out: dict | None = None,
                   log: Callable[[str], None] | None = None) -> tuple[bytes, dict[str, Any]]:
    """Quantize, serialize, compress and frame a state dict -> (artifact bytes, quant stats).

    hessians: calibration Hessians for quant.matrix_method=gptq (pgolf.quant.calibration);
    payload_out, when given, receives the quantized payload (for group_byte_report); log gets
    progress lines (compression is one call: a line before it and one after).
    """
    if qcfg.compressor not in ARTIFACT_COMPRESSORS:
        raise ArtifactError(f"quant.compressor={qcfg.compressor!r} unknown; "
                            f"use one of {', '.join(ARTIFACT_COMPRESSORS)}")
    payload, stats = quantize_state_dict(state_dict, qcfg, hessians, log)
    if payload_out is not None:
        payload_out.update(payload)
    body = _body(payload, qcfg, int_layout)
    lines, what = Progress(log, "quant:compress part", 1), f"bytes:{len(body)} compressor:{qcfg.compressor}"
    lines.step(0, what)
    comp = _compress(body, qcfg)
    lines.step(1, what)
    header = json.dumps({"compressor": qcfg.compressor, "level": qcfg.level, "body_bytes": len(body),
                         "config_hash": config_hash, "meta": meta or {}},
                        sort_keys=True, separators=(",", ":")).encode()
    prefix = _ART_PREFIX.pack(ARTIFACT_MAGIC, ARTIFACT_VERSION, len(header), zlib.crc32(header),
                              len(comp), hashlib.sha256(comp).digest())
    stats["body_bytes"], stats["payload_bytes"] = len(body), len(comp)
    return prefix + header + comp, stats


def pack_artifact(state_dict: dict[str, Tensor], qcfg: QuantConfig, config_hash: str = "",
                  meta: dict[str, Any] | None = None, int_layout: str | None = None,
                  hessians: dict[str, Tensor] | None = None, log: Callable[[str], None] | None = None) -> bytes:
    """State dict -> artifact bytes (see build_artifact for the stats as well)."""
    return build_artifact(state_dict, qcfg, config_hash, meta, int_layout, hessians, log=log)[0]


def _check_frame(blob: bytes, source: str) -> tuple[dict[str, Any], bytes]:
    """Validate the framing; return (header dict, compressed payload)."""
    n = _ART_PREFIX.size
    head = blob[:len(ARTIFACT_MAGIC)]
    if not head or head != ARTIFACT_MAGIC[:len(head)]:
        raise ArtifactError(f"{source}: not a pgolf artifact (bad magic); pass a file written by pgolf export")
    if len(blob) >= 8:
        (version,) = struct.unpack_from("<H", blob, 6)
        if version not in _ART_READABLE:
            raise ArtifactError(f"{source}: unsupported artifact version {version} (expected "
                                f"{ARTIFACT_VERSION}); re-export it with this pgolf version")
    if len(blob) < n:
        raise ArtifactError(f"{source}: truncated (expected at least {n} bytes, got {len(blob)}); re-copy the file")
    _, version, hlen, hcrc, plen, sha = _ART_PREFIX.unpack_from(blob, 0)
    if len(blob) != n + hlen + plen:
        what = "truncated" if len(blob) < n + hlen + plen else "trailing bytes"
        raise ArtifactError(f"{source}: {what} (expected {n + hlen + plen} bytes, got {len(blob)}); re-copy the file")
    hbytes, comp = blob[n:n + hlen], blob[n + hlen:]
    if zlib.crc32(hbytes) != hcrc or hashlib.sha256(comp).digest() != sha:
        raise ArtifactError(f"{source}: checksum mismatch (corrupt file); re-copy or re-export it")
    try:
        header = json.loads(hbytes.decode())
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise ArtifactError(f"{source}: header is not a JSON object; re-export it with pgolf")
    header.update(version=version, payload_len=plen, payload_sha256=sha.hex(), total_bytes=len(blob))
    if header.get("compressor") not in ARTIFACT_COMPRESSORS:
        raise ArtifactError(f"{source}: unknown compressor {header.get('compressor')!r}; "
                            f"this pgolf reads {', '.join(ARTIFACT_COMPRESSORS)}")
    return header, comp


def artifact_body_cap(n_params: int) -> int:
    """Largest body a model of n_params floating-point weights can need: at most 4 bytes a
    weight (int code + row scale <= 3, fp16 2), plus room for the manifest."""
    return 4 * int(n_params) + (1 << 20)


def _body_limit(header: dict[str, Any], source: str, max_body_bytes: int | None) -> int:
    """Bytes the body may decompress to: the declared size, checked against the caps."""
    cap, why = ART_MAX_BODY_BYTES, "pgolf's sanity cap"
    if max_body_bytes is not None and max_body_bytes < cap:
        cap, why = int(max_body_bytes), "the model it is read for"
    if header["version"] == 1:
        return cap  # no declared size: the cap alone bounds it
    declared = header.get("body_bytes")
    if type(declared) is not int or declared < 4:
        raise ArtifactError(f"{source}: header declares no valid body size ({declared!r}); re-export it with pgolf")
    if declared > cap:
        raise ArtifactError(f"{source}: header declares a {declared:,}-byte body, over the {cap:,} bytes {why} "
                            "allows; pass the artifact of this run's model or re-export it")
    return declared


def unpack_artifact(blob: bytes, source: str = "<bytes>", max_body_bytes: int | None = None
                    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Artifact bytes -> (float32 state dict, header incl. the tensor manifest).

    max_body_bytes: the most the body may hold for the model the caller expects
    (artifact_body_cap(params)); ART_MAX_BODY_BYTES applies in any case.
    """
    header, comp = _check_frame(bytes(blob), source)
    limit = _body_limit(header, source, max_body_bytes)
    try:
        body = (decompress_pergroup(comp, limit) if header["compressor"] == "pergroup"
                else decompress_bytes(comp, header["compressor"], int(header["level"]), max_size=limit))
        if header["version"] >= 2 and len(body) != limit:
            raise ArtifactError(f"{source}: body is {len(body):,} bytes, the header declares {limit:,}; "
                                "re-copy or re-export it")
        payload, manifest = deserialize_payload(body)
        # LQER factors that do not fit their tensor are refused here (pgolf.quant.lqer)
        state = dequantize_state_dict(payload)
    except ArtifactError:
        raise
    except CodecError as e:
        raise ArtifactError(f"{source}: {e}") from None
    except (ValueError, KeyError, TypeError, IndexError, struct.error, RuntimeError) as e:
        detail = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        raise ArtifactError(f"{source}: undecodable payload ({detail}); re-export it") from None
    header["body_bytes"] = len(body)
    header["manifest"] = [{k: m[k] for k in ("name", "shape", "dtype", "method", "bits")} for m in manifest]
    return state, header


def write_artifact(path: str | os.PathLike, blob: bytes, overwrite: bool = False) -> Path:
    """Atomically write blob to path (pgolf.atomic); refuse an existing path unless overwrite."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise ArtifactError(f"{p}: already exists; pass overwrite=True or choose another path")
    try:
        return atomic_write(p, lambda f: f.write(blob), overwrite=overwrite)
    except FileExistsError:
        raise ArtifactError(f"{p}: already exists; pass overwrite=True or choose another path") from None


def _read_file(path: str | os.PathLike) -> tuple[Path, bytes]:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: artifact not found; check the path (pgolf export writes it)")
    try:
        size = p.stat().st_size
        if size > ART_MAX_FILE_BYTES:
            raise ArtifactError(f"{p}: {size:,} bytes, larger than any artifact pgolf reads "
                                f"({ART_MAX_FILE_BYTES:,}); pass the model.ptz a pgolf run wrote")
        return p, p.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{p}: cannot be read ({e.strerror or e}); check its permissions") from None


def read_artifact(path: str | os.PathLike, max_body_bytes: int | None = None
                  ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and decode an artifact file -> (float32 state dict, header); see unpack_artifact."""
    p, blob = _read_file(path)
    return unpack_artifact(blob, source=str(p), max_body_bytes=max_body_bytes)


def read_artifact_header(path: str | os.PathLike) -> dict[str, Any]:
    """The checked header of an artifact file, without decompressing its payload."""
    p, blob = _read_file(path)
    return _check_frame(blob, str(p))[0]


def budget_report(model_bytes: int, code_bytes: int, limit: int = CHALLENGE_LIMIT_BYTES) -> dict[str, Any]:
    """Byte accounting of a submission: artifact = compressed model + code, against the limit."""
    total = int(model_bytes) + int(code_bytes)
    return {"model_bytes": int(model_bytes), "code_bytes": int(code_bytes), "artifact_bytes": total,
            "limit": int(limit), "margin": int(limit) - total, "ok": total <= int(limit)}


def check_budget(report: dict[str, Any], what: str) -> None:
    """Raise OverBudgetError when report (from budget_report) is over its limit."""
    if report["ok"]:
        return
    raise OverBudgetError(
        f"artifact {what} is {-report['margin']:,} bytes over the {report['limit']:,}-byte limit "
        f"(model {report['model_bytes']:,} + code {report['code_bytes']:,}): lower quant.matrix_bits, "
        f"use quant.compressor=lzma, or shrink the model")
