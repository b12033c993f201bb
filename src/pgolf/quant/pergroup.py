"""quant.compressor=pergroup (#1855's compressor) over pgolf's artifact body.

The body (pgolf.quant.artifact) stays what it is; this codec only stores it differently. The
integer codes of the block matrices and the token embedding are taken out and gathered by
role (every layer's c_q together, ...); in the "hot" roles each matrix's rows are first
reordered by a greedy L1 nearest-neighbour walk (the order is stored as uint16), and every
matrix is stored column by column. Each role's bytes go through `lrzip -z` (ZPAQ) in a
subprocess; what is left of the body (manifest, other codes, scales, fp16 tensors) and the
row orders go through brotli. Decoding rebuilds the exact body, which the artifact reader
then checks as any other.

Container: b"PGRP" | u32 header_len | header JSON | streams (sizes listed in the header).
"""

import json
import os
import re
import resource
import shutil
import struct
import subprocess
import tempfile
from typing import Any

import numpy as np

from pgolf.config_tree import QuantConfig
from pgolf.quant.codec import CodecError, brotli_compress, decompress_bytes

PERGROUP_MAGIC = b"PGRP"
# The record's group order; rows of the hot roles are similarity-sorted before compression.
PERGROUP_ROLES = ("tok_emb", "attn.c_k", "attn.c_q", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")
PERGROUP_HOT = frozenset({"tok_emb", "attn.c_q", "mlp.fc"})
_ROLE_NAME = re.compile(r"blocks\.(\d+)\.(attn\.c_k|attn\.c_q|attn\.c_v|attn\.proj|mlp\.fc|mlp\.proj)\.weight")
LRZIP_INSTALL = "apt-get install lrzip"
_LRZIP_SIZE = struct.Struct("<4s2xQ")  # lrzip's magic, version, then the decompressed size
def lrzip_program() -> str | None:
    return shutil.which("lrzip")


def lrzip_missing_message() -> str:
    return (f"quant.compressor=pergroup needs the lrzip program, which is not on PATH: {LRZIP_INSTALL} "
            "(or set quant.compressor_fallback=brotli)")


def pergroup_setup(qcfg: QuantConfig) -> tuple[str | None, str | None]:
    """(error, warning) of quant.compressor=pergroup on this machine, checked before training:
    the lrzip program (unless quant.compressor_fallback=brotli) and the brotli package."""
    if qcfg.compressor != "pergroup":
        return None, None
    try:
        brotli_compress(b"")
    except CodecError as e:
        return str(e), None
    if lrzip_program() is not None:
        return None, None
    if qcfg.compressor_fallback == "brotli":
        return None, "quant.compressor=pergroup: lrzip is not on PATH, its groups are compressed with brotli"
    return lrzip_missing_message(), None


def group_role(name: str) -> tuple[str, int] | None:
    """(role, layer) of a matrix the per-group streams hold, else None."""
    if name == "tok_emb.weight":
        return "tok_emb", 0
    m = _ROLE_NAME.fullmatch(name)
    return (m.group(2), int(m.group(1))) if m else None


def similarity_order(codes: np.ndarray) -> np.ndarray:
    """Greedy walk from row 0, each step to the nearest unvisited row in L1 distance (ties: the
    lowest index), so neighbouring rows are alike for the compressor. uint16 permutation."""
    n = codes.shape[0]
    if n > 65536:
        raise CodecError(f"similarity sort of {n} rows: the stored order is uint16 (at most 65536 rows)")
    # Unvisited rows stay packed at the front (a visited row's slot takes the last one), so each
    # step reads size x cols bytes and copies nothing; int8 differences hold codes up to +-63.
    wide = n and int(np.abs(codes.astype(np.int16)).max()) > 63
    rows = np.array(codes, dtype=np.int16 if wide else np.int8)
    ids, diff = np.arange(n), np.empty_like(rows)
    order = np.empty(n, dtype=np.uint16)
    cur, size = 0, n
    for k in range(n):
        order[k], size = ids[cur], size - 1
        if size == 0:
            break
        row = rows[cur].copy()
        rows[cur], ids[cur] = rows[size], ids[size]
        np.abs(np.subtract(rows[:size], row, out=diff[:size]), out=diff[:size])
        dist = diff[:size].sum(axis=1, dtype=np.int32)
        ties = np.flatnonzero(dist == dist.min())
        cur = int(ties[np.argmin(ids[ties])])
    return order


def _manifest(body: bytes) -> tuple[list[dict[str, Any]], int]:
    (mlen,) = struct.unpack_from("<I", body, 0)
    if 4 + mlen > len(body):
        raise CodecError("pergroup: the body's manifest runs past its end; re-export the artifact")
    tensors = json.loads(bytes(body[4:4 + mlen]).decode()).get("tensors")
    if not isinstance(tensors, list) or not all(isinstance(m, dict) for m in tensors):
        raise CodecError("pergroup: the body's manifest holds no tensor list; re-export the artifact")
    return tensors, 4 + mlen


def _grouped(tensors: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Int entries stored one code a byte, 2-D, named for a role: by role, in layer order."""
    groups: dict[str, list[tuple[int, dict]]] = {}
    for m in tensors:
        if _codes_entry(m):
            role, layer = group_role(m["name"])
            groups.setdefault(role, []).append((layer, m))
    return {r: [m for _, m in sorted(groups[r], key=lambda t: t[0])] for r in PERGROUP_ROLES if r in groups}


def _codes(raw: bytes, m: dict[str, Any]) -> np.ndarray:
    rows, cols = m["shape"]
    q = np.frombuffer(raw, dtype=np.int8)
    return q.reshape(cols, rows).T if m.get("order") == "columns" else q.reshape(rows, cols)


def _body_bytes(codes: np.ndarray, m: dict[str, Any]) -> bytes:
    return np.ascontiguousarray(codes.T if m.get("order") == "columns" else codes).tobytes()


def _lrzip(args: list[str], data: bytes, out_cap: int | None = None) -> bytes:
    with tempfile.TemporaryDirectory(prefix="pgolf_pgrp_") as tmp:
        src, dst = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        with open(src, "wb") as fh:
            fh.write(data)

        def cap_output() -> None:  # the child may not write a larger file than the body allows
            if out_cap is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (out_cap + 4096, out_cap + 4096))
        try:
            subprocess.run([lrzip_program() or "lrzip", *args, "-o", dst, src], capture_output=True, check=True,
                           preexec_fn=cap_output)
        except FileNotFoundError:
            raise CodecError(f"this artifact's groups are lrzip streams, and lrzip is not on PATH: "
                             f"{LRZIP_INSTALL}") from None
        except subprocess.CalledProcessError as e:
            raise CodecError(f"lrzip failed (exit {e.returncode}) on a pergroup stream; a corrupt file, "
                             "or re-export it") from None
        with open(dst, "rb") as fh:
            return fh.read()


def compress_pergroup(body: bytes, level: int, fallback: str = "error") -> bytes:
    """The artifact body -> the pergroup container (see the module doc)."""
    codec = "lrzip"
    if lrzip_program() is None:
        if fallback != "brotli":
            raise CodecError(lrzip_missing_message())
        codec = "brotli"
    tensors, data_at = _manifest(body)
    cuts, groups, streams, perms = [], [], [], []
    for role, entries in _grouped(tensors).items():
        parts = []
        for m in entries:
            off, n = m["q"]
            codes = _codes(body[data_at + off:data_at + off + n], m)
            if role in PERGROUP_HOT:
                order = similarity_order(codes)
                perms.append(order.tobytes())
                codes = codes[order]
            parts.append(np.ascontiguousarray(codes.T).tobytes())
            cuts.append((data_at + off, n))
        raw = b"".join(parts)
        streams.append(_lrzip(["-z", "-L", str(max(1, min(level, 9)))], raw) if codec == "lrzip"
                       else _brotli(raw))
        groups.append({"role": role, "names": [m["name"] for m in entries], "codec": codec, "bytes": len(raw)})
    rest, at = [], 0
    for start, n in sorted(cuts):
        rest.append(body[at:start])
        at = start + n
    rest.append(body[at:])
    rest_raw, perm_raw = b"".join(rest), b"".join(perms)
    streams += [_brotli(rest_raw), _brotli(perm_raw)]
    header = json.dumps({"groups": groups, "rest": len(rest_raw), "perm": len(perm_raw),
                         "sizes": [len(s) for s in streams]}, sort_keys=True, separators=(",", ":")).encode()
    return PERGROUP_MAGIC + struct.pack("<I", len(header)) + header + b"".join(streams)


def _brotli(raw: bytes) -> bytes:
    return brotli_compress(raw, quality=11, lgwin=24)  # the record's remainder stream: 16 MiB window


def _unbrotli(data: bytes, size: int, what: str) -> bytes:
    raw = decompress_bytes(data, "brotli", 11, max_size=size)
    if len(raw) != size:
        raise CodecError(f"pergroup {what} stream holds {len(raw):,} bytes, the header declares {size:,}; "
                         "re-copy or re-export the artifact")
    return raw


def _container(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    if data[:4] != PERGROUP_MAGIC or len(data) < 8:
        raise CodecError("not a pergroup container (bad magic); re-export the artifact")
    (hlen,) = struct.unpack_from("<I", data, 4)
    if 8 + hlen > len(data):
        raise CodecError("pergroup header runs past the payload; re-copy or re-export the artifact")
    head = json.loads(data[8:8 + hlen].decode())
    groups, sizes = head.get("groups"), head.get("sizes")
    ok = (isinstance(groups, list) and isinstance(sizes, list) and len(sizes) == len(groups) + 2
          and all(type(n) is int and n >= 0 for n in sizes) and sum(sizes) == len(data) - 8 - hlen
          and all(type(head.get(k)) is int and head[k] >= 0 for k in ("rest", "perm")))
    for g in groups if ok else []:
        ok = ok and isinstance(g, dict) and g.get("role") in PERGROUP_ROLES and g.get("codec") in ("lrzip", "brotli") \
            and isinstance(g.get("names"), list) and all(isinstance(n, str) for n in g["names"]) \
            and type(g.get("bytes")) is int and g["bytes"] >= 0
    if not ok:
        raise CodecError("pergroup header is malformed; re-copy or re-export the artifact")
    streams, at = [], 8 + hlen
    for n in sizes:
        streams.append(data[at:at + n])
        at += n
    return head, streams


def decompress_pergroup(data: bytes, max_size: int) -> bytes:
    """The pergroup container -> the exact artifact body (at most max_size bytes)."""
    try:
        head, streams = _container(bytes(data))
    except (ValueError, UnicodeDecodeError):
        raise CodecError("pergroup header is not JSON; re-copy or re-export the artifact") from None
    groups = head["groups"]
    if head["rest"] + sum(g["bytes"] for g in groups) > max_size:
        raise CodecError(f"pergroup streams declare more than the {max_size:,} body bytes allowed; "
                         "pass the artifact of this run's model or re-export it")
    rest = _unbrotli(streams[-2], head["rest"], "remainder")
    tensors, _ = _manifest(rest)
    by_name = {str(m.get("name")): m for m in tensors}
    plan, hot_rows, seen = [], 0, set()
    for g in groups:
        entries = [by_name.get(n) for n in g["names"]]
        if any(m is None or not _codes_entry(m) or group_role(m["name"])[0] != g["role"] or m["name"] in seen
               for m in entries):
            raise CodecError(f"pergroup group {g['role']} names tensors its manifest does not hold as codes; "
                             "re-export the artifact")
        seen.update(m["name"] for m in entries)
        sizes = [m["shape"][0] * m["shape"][1] for m in entries]
        if sum(sizes) != g["bytes"]:
            raise CodecError(f"pergroup group {g['role']} declares {g['bytes']:,} bytes, its tensors hold "
                             f"{sum(sizes):,}; re-export the artifact")
        hot_rows += sum(m["shape"][0] for m in entries) if g["role"] in PERGROUP_HOT else 0
        plan.append((g, entries, sizes))
    perm_raw = _unbrotli(streams[-1], head["perm"], "row order")
    if len(perm_raw) != 2 * hot_rows:
        raise CodecError("pergroup row orders do not match the sorted tensors; re-export the artifact")
    perms = np.frombuffer(perm_raw, dtype=np.uint16)
    pieces: dict[str, bytes] = {}
    for (g, entries, sizes), stream in zip(plan, streams):
        raw = _ungroup(stream, g)
        at = 0
        for m, n in zip(entries, sizes):
            rows, cols = m["shape"]
            codes = np.frombuffer(raw[at:at + n], dtype=np.int8).reshape(cols, rows).T
            at += n
            if g["role"] in PERGROUP_HOT:
                order, perms = perms[:rows].astype(np.int64), perms[rows:]
                if np.bincount(order, minlength=rows).size != rows or not (np.bincount(order) == 1).all():
                    raise CodecError(f"pergroup row order of {m['name']} is not a permutation; re-export it")
                unsorted = np.empty_like(codes)
                unsorted[order] = codes
                codes = unsorted
            pieces[m["name"]] = _body_bytes(codes, m)
    return _splice(rest, pieces, by_name)


def _codes_entry(m: dict[str, Any]) -> bool:
    """A 2-D int entry of a role, one code a byte, its byte range matching its shape: what the
    per-group streams may hold (a crafted header naming anything else is refused)."""
    shape, q = m.get("shape"), m.get("q")
    return (group_role(str(m.get("name"))) is not None and m.get("kind") == "int" and m.get("layout") == "bytes"
            and isinstance(shape, list) and len(shape) == 2 and all(type(d) is int and 0 < d <= 65536 for d in shape)
            and isinstance(q, list) and len(q) == 2 and all(type(v) is int and v >= 0 for v in q)
            and q[1] == shape[0] * shape[1])


def _ungroup(stream: bytes, g: dict[str, Any]) -> bytes:
    if g["codec"] == "brotli":
        return _unbrotli(stream, g["bytes"], g["role"])
    if len(stream) < _LRZIP_SIZE.size:
        raise CodecError(f"pergroup {g['role']} lrzip stream is truncated; re-copy or re-export the artifact")
    magic, declared = _LRZIP_SIZE.unpack_from(stream, 0)
    if magic != b"LRZI" or declared != g["bytes"]:
        raise CodecError(f"pergroup {g['role']} stream is not lrzip of {g['bytes']:,} bytes; re-export the artifact")
    raw = _lrzip(["-d", "-f"], stream, out_cap=g["bytes"])
    if len(raw) != g["bytes"]:
        raise CodecError(f"pergroup {g['role']} stream decodes to {len(raw):,} bytes, not {g['bytes']:,}; "
                         "re-copy or re-export the artifact")
    return raw


def _splice(rest: bytes, pieces: dict[str, bytes], by_name: dict[str, dict[str, Any]]) -> bytes:
    """Put each tensor's codes back at its manifest offset; the remainder fills the gaps."""
    _, data_at = _manifest(rest)
    cuts = sorted((data_at + by_name[n]["q"][0], n) for n in pieces)
    out, at, prev = [], 0, 0
    for start, name in cuts:
        gap = start - prev
        if gap < 0 or at + gap > len(rest):
            raise CodecError("pergroup code ranges overlap or run past the body; re-export the artifact")
        out += [rest[at:at + gap], pieces[name]]
        at, prev = at + gap, start + len(pieces[name])
    out.append(rest[at:])
    return b"".join(out)
