import os

import pytest
import torch

from pgolf.config_tree import QuantConfig
from pgolf.quant.artifact import (ARTIFACT_VERSION, ArtifactError, OverBudgetError, budget_report, build_artifact,
                                  check_budget, pack_artifact, read_artifact, unpack_artifact, write_artifact)
from pgolf.quant.policy import dequantize_state_dict, quant_category, quantize_state_dict


def _sd(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=1.0: torch.randn(*s, generator=g) * std
    return {
        "tok_emb.weight": r(64, 32, std=0.5),
        "bigram.embed.weight": r(48, 16, std=0.5),
        "blocks.0.attn.c_q.weight": r(32, 32, std=0.8),
        "blocks.0.mlp.fc.weight": r(96, 32, std=0.8),
        "blocks.0.mlp.proj.weight": r(32, 96, std=0.8),
        "blocks.0.attn_scale": r(32),
        "blocks.0.resid_mix": r(2, 32),
        "bigram.scale": torch.tensor(0.05),
        "big_vector": r(3000),
        "step_count": torch.tensor([7, 8], dtype=torch.int64),
        "mask": torch.tensor([True, False]),
    }


def _q(**kw):
    base = dict(matrix_bits=6, matrix_method="gptq_lite", embed_bits=8, small_numel=256,
                compressor="lzma", level=6)
    base.update(kw)
    return QuantConfig(**base)


def test_categories_by_name_and_size():
    sd = _sd()
    cats = {n: quant_category(n, t, 256) for n, t in sd.items()}
    assert cats["tok_emb.weight"] == "embed" and cats["bigram.embed.weight"] == "embed"
    assert cats["blocks.0.attn.c_q.weight"] == "matrix" and cats["blocks.0.mlp.proj.weight"] == "matrix"
    assert cats["blocks.0.attn_scale"] == "small" and cats["bigram.scale"] == "small"
    assert cats["big_vector"] == "other" and cats["step_count"] == "raw"
    assert quant_category("lm_head.weight", torch.zeros(300, 2), 256) == "embed"
    assert quant_category("ve.embed.weight", torch.zeros(64, 4), 256) == "small"


def test_policy_bits_and_stats():
    sd = _sd()
    payload, stats = quantize_state_dict(sd, _q())
    assert payload["blocks.0.mlp.fc.weight"]["bits"] == 6
    assert payload["tok_emb.weight"]["bits"] == 8
    assert payload["blocks.0.attn_scale"]["kind"] == "fp16"
    assert payload["big_vector"]["kind"] == "fp16"
    assert int(payload["blocks.0.mlp.fc.weight"]["q"].abs().max()) <= 31
    cats = stats["categories"]
    assert cats["matrix"]["tensors"] == 3 and cats["matrix"]["params"] == 32 * 32 + 2 * 96 * 32
    assert cats["embed"]["tensors"] == 2 and cats["raw"]["tensors"] == 2
    assert 0 < cats["embed"]["mse"] < cats["matrix"]["mse"]
    dq = dequantize_state_dict(payload)
    assert all(dq[n].dtype == torch.float32 for n in sd if sd[n].is_floating_point())
    assert torch.equal(dq["step_count"], sd["step_count"])
    fp16 = _q(matrix_bits=16, embed_bits=16)
    p16, s16 = quantize_state_dict(sd, fp16)
    assert "matrix" in s16["categories"] and p16["blocks.0.mlp.fc.weight"]["kind"] == "fp16"


def test_policy_rejects_bad_values():
    # A width outside the config's Literal is refused by finalize_config; a QuantConfig built
    # by hand still meets the quantizer's own guard.
    with pytest.raises(ValueError, match=r"bits must be an int in 2\.\.8 .*got 12"):
        quantize_state_dict(_sd(), _q(matrix_bits=12))
    bad = _sd()
    bad["blocks.0.mlp.fc.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="blocks.0.mlp.fc.weight has NaN"):
        quantize_state_dict(bad, _q())


@pytest.mark.parametrize("layout", ["bytes", "packed"])
@pytest.mark.parametrize("compressor", ["zlib", "lzma"])
def test_roundtrip(layout, compressor):
    sd = _sd()
    qcfg = _q(compressor=compressor, level=9 if compressor == "zlib" else 6)
    blob = pack_artifact(sd, qcfg, config_hash="abc123", meta={"seed": 1}, int_layout=layout)
    out, header = unpack_artifact(blob)
    assert header["config_hash"] == "abc123" and header["meta"] == {"seed": 1}
    assert header["version"] == ARTIFACT_VERSION and header["compressor"] == compressor
    names = [m["name"] for m in header["manifest"]]
    assert names == list(sd)
    fc = next(m for m in header["manifest"] if m["name"] == "blocks.0.mlp.fc.weight")
    assert fc["bits"] == 6 and fc["shape"] == [96, 32] and fc["method"] == "gptq_lite_matrix"
    ref = dequantize_state_dict(quantize_state_dict(sd, qcfg)[0])
    for n, t in sd.items():
        assert out[n].shape == t.shape
        assert torch.equal(out[n], ref[n]), n
    for n in ("blocks.0.attn_scale", "big_vector", "bigram.scale"):
        assert torch.equal(out[n], sd[n].half().float())
    assert torch.equal(out["mask"], sd["mask"])
    err = (out["blocks.0.mlp.fc.weight"] - sd["blocks.0.mlp.fc.weight"]).abs().max()
    assert float(err) < 0.8 * 4 / 31  # std 0.8 => row max well under 4: half a step bound


def test_deterministic_bytes_and_packed_differs():
    a = pack_artifact(_sd(), _q(), "h")
    assert a == pack_artifact(_sd(), _q(), "h")
    assert a != pack_artifact(_sd(), _q(), "h", int_layout="packed")
    assert a != pack_artifact(_sd(), _q(), "other")


def test_header_errors():
    blob = pack_artifact(_sd(), _q())
    with pytest.raises(ArtifactError, match=r"^m\.bin: truncated \(expected \d+ bytes, got \d+\)"):
        unpack_artifact(blob[:-10], source="m.bin")
    with pytest.raises(ArtifactError, match="truncated"):
        unpack_artifact(blob[:20], source="m.bin")
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x10
    with pytest.raises(ArtifactError, match="m.bin: checksum mismatch"):
        unpack_artifact(bytes(flipped), source="m.bin")
    hdr = bytearray(blob)
    hdr[60] ^= 0x01  # inside the JSON header
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        unpack_artifact(bytes(hdr))
    v2 = bytearray(blob)
    v2[6] = ARTIFACT_VERSION + 1
    with pytest.raises(ArtifactError, match=f"unsupported artifact version {ARTIFACT_VERSION + 1} "
                                            f"\\(expected {ARTIFACT_VERSION}\\)"):
        unpack_artifact(bytes(v2))
    for foreign in (b"PK\x03\x04" + blob[4:], b"", b"\x80\x02}q"):
        with pytest.raises(ArtifactError, match="not a pgolf artifact"):
            unpack_artifact(foreign, source="x.pt")
    with pytest.raises(ArtifactError, match="trailing bytes"):
        unpack_artifact(blob + b"\x00")


def test_unknown_compressor_in_header():
    import hashlib
    import json
    import struct
    import zlib
    blob = pack_artifact(_sd(), _q())
    prefix = struct.Struct("<6sHIIQ32s")
    magic, ver, hlen, _, plen, sha = prefix.unpack_from(blob)
    header = json.loads(blob[prefix.size:prefix.size + hlen])
    header["compressor"] = "snappy"
    hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    forged = prefix.pack(magic, ver, len(hb), zlib.crc32(hb), plen, sha) + hb + blob[prefix.size + hlen:]
    with pytest.raises(ArtifactError, match="unknown compressor 'snappy'"):
        unpack_artifact(forged, source="f.bin")


def test_write_read_refuses_overwrite(tmp_path):
    blob, stats = build_artifact(_sd(), _q(), "cfg")
    assert stats["payload_bytes"] < len(blob)
    path = write_artifact(tmp_path / "sub" / "model.pgolf", blob)
    sd, header = read_artifact(path)
    assert header["total_bytes"] == len(blob) == os.path.getsize(path)
    with pytest.raises(ArtifactError, match="already exists; pass overwrite=True"):
        write_artifact(path, b"junk")
    assert path.read_bytes() == blob
    write_artifact(path, blob[:-1] + bytes([blob[-1] ^ 1]), overwrite=True)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        read_artifact(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pgolf"]  # no temp files left
    with pytest.raises(ArtifactError, match="not found"):
        read_artifact(tmp_path / "missing.pgolf")


def test_budget():
    rep = budget_report(15_900_000, 100_000)
    assert rep == {"model_bytes": 15_900_000, "code_bytes": 100_000, "artifact_bytes": 16_000_000,
                   "limit": 16_000_000, "margin": 0, "ok": True}
    check_budget(rep, "run1")
    over = budget_report(15_950_001, 50_000)
    assert over["artifact_bytes"] == 16_000_001 and not over["ok"]
    with pytest.raises(OverBudgetError, match=r"artifact run1 is 1 bytes over the 16,000,000-byte limit "
                                              r"\(model 15,950,001 \+ code 50,000\)"):
        check_budget(over, "run1")
    assert budget_report(10, 5, limit=14)["margin"] == -1
