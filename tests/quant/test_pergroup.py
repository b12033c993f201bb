"""quant.compressor=pergroup: #1855's per-role lrzip streams over pgolf's artifact body."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.config_tree import QuantConfig
from pgolf.quant.artifact import build_artifact, serialize_payload, unpack_artifact
from pgolf.quant.codec import CodecError
from pgolf.quant.pergroup import (PERGROUP_HOT, compress_pergroup, decompress_pergroup, group_role,
                                  pergroup_setup, similarity_order)
from pgolf.quant.policy import quantize_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import tiny  # noqa: E402

brotli = pytest.importorskip("brotli", reason="pergroup needs the brotli package: pip install brotli")
needs_lrzip = pytest.mark.skipif(shutil.which("lrzip") is None, reason="lrzip not installed: apt-get install lrzip")


def record_like_state(layers=2, vocab=256, dim=64, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"tok_emb.weight": torch.randn(vocab, dim, generator=g) * 0.02}
    shapes = {"attn.c_q": (dim, dim), "attn.c_k": (dim // 2, dim), "attn.c_v": (dim // 2, dim),
              "attn.proj": (dim, dim), "mlp.fc": (2 * dim, dim), "mlp.proj": (dim, 2 * dim)}
    for i in range(layers):
        for role, shape in shapes.items():
            sd[f"blocks.{i}.{role}.weight"] = torch.randn(*shape, generator=g) * 0.05
        sd[f"blocks.{i}.attn.q_gain"] = torch.ones(4)
    return sd


def qcfg(**over) -> QuantConfig:
    q = QuantConfig()
    q.small_numel, q.matrix_bits, q.embed_bits, q.compressor = 0, 6, 7, "pergroup"
    for k, v in over.items():
        setattr(q, k, v)
    return q


def body_of(sd, code_order="rows") -> bytes:
    payload, _ = quantize_state_dict(sd, qcfg())
    return serialize_payload(payload, code_order=code_order)


def without_lrzip(monkeypatch, tmp_path):
    """PATH holding everything but lrzip (python itself stays reachable)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("lrzip") is None


@needs_lrzip
@pytest.mark.parametrize("order", ["rows", "columns"])
def test_pergroup_round_trip_is_bit_exact(order):
    body = body_of(record_like_state(), order)
    packed = compress_pergroup(body, 9)
    assert decompress_pergroup(packed, len(body)) == body
    with pytest.raises(CodecError, match="more than"):
        decompress_pergroup(packed, len(body) - 1)


@needs_lrzip
def test_pergroup_artifact_reads_back_as_the_same_weights():
    sd = record_like_state()
    a, _ = unpack_artifact(build_artifact(sd, qcfg())[0])
    b, _ = unpack_artifact(build_artifact(sd, qcfg(compressor="lzma"))[0])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_similarity_order_walks_a_shuffled_chain_back_in_order():
    # Rows k = [k, k, ...]: the nearest unvisited row is always the next k.
    chain = np.repeat(np.arange(40, dtype=np.int8)[:, None], 8, axis=1)
    perm = np.r_[0, 1 + np.random.default_rng(0).permutation(39)]
    order = similarity_order(chain[perm])
    assert sorted(order.tolist()) == list(range(40))
    assert chain[perm][order][:, 0].tolist() == list(range(40))


def test_roles_are_the_records_groups():
    assert group_role("tok_emb.weight") == ("tok_emb", 0)
    assert group_role("blocks.10.mlp.fc.weight") == ("mlp.fc", 10)
    assert group_role("blocks.3.attn.attn_gate_w") is None and group_role("blocks.1.mlp.fc.weight.lqer_a") is None
    assert PERGROUP_HOT == {"tok_emb", "attn.c_q", "mlp.fc"}


def test_missing_lrzip_is_one_line_naming_the_package(monkeypatch, tmp_path):
    without_lrzip(monkeypatch, tmp_path)
    with pytest.raises(CodecError) as e:
        compress_pergroup(body_of(record_like_state(layers=1)), 9)
    assert "apt-get install lrzip" in str(e.value) and "\n" not in str(e.value)
    err, warn = pergroup_setup(qcfg())
    assert "apt-get install lrzip" in err and warn is None
    assert pergroup_setup(qcfg(compressor="lzma")) == (None, None)


def test_brotli_fallback_round_trips_without_lrzip(monkeypatch, tmp_path):
    without_lrzip(monkeypatch, tmp_path)
    assert pergroup_setup(qcfg(compressor_fallback="brotli"))[0] is None
    sd = record_like_state(layers=1)
    blob, _ = build_artifact(sd, qcfg(compressor_fallback="brotli"))
    a, _ = unpack_artifact(blob)
    b, _ = unpack_artifact(build_artifact(sd, qcfg(compressor="lzma"))[0])
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CodecError, match="apt-get install lrzip"):
        build_artifact(sd, qcfg())  # the default: no silent fallback


@needs_lrzip
def test_a_crafted_header_cannot_point_groups_elsewhere():
    body = body_of(record_like_state(layers=1))
    packed = bytearray(compress_pergroup(body, 9))
    i = packed.index(b'"attn.c_k"')
    packed[i:i + 10] = b'"attn.c_v"'  # the c_k stream claimed for the c_v role
    with pytest.raises(CodecError):
        decompress_pergroup(bytes(packed), len(body))


def test_train_stops_before_training_without_lrzip(monkeypatch, tmp_path, embedded_corpus, capsys):
    from pgolf import cli
    import pgolf.run as run
    without_lrzip(monkeypatch, tmp_path)
    monkeypatch.setattr(run, "load_val", lambda *a, **k: pytest.fail("data loaded before the lrzip check"))
    out = tmp_path / "run"
    rc = cli.main(["train", "--preset", "smoke", "--out", str(out), "--set", "quant.compressor=pergroup",
                   "--set", f"data.path={embedded_corpus['data_path']}",
                   "--set", f"data.tokenizer_path={embedded_corpus['tokenizer_path']}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "apt-get install lrzip" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_stream_batches_and_brotli_fallback_train_end_to_end(monkeypatch, tmp_path, embedded_corpus):
    from pgolf.run import train
    without_lrzip(monkeypatch, tmp_path)
    cfg = tiny(embedded_corpus, "data.packing=stream", "model.doc_mask=true", "model.doc_max_len=32",
               "quant.compressor=pergroup", "quant.compressor_fallback=brotli", "model.bigram_vocab_size=0",
               "quant.level=9")
    metrics = train(cfg, str(tmp_path / "run"))
    assert np.isfinite(metrics["val_bpb"]) and (tmp_path / "run" / "model.ptz").is_file()
