"""Which tokenizer a data folder finds by itself (data.tokenizer_path empty)."""

import pytest

from pgolf.config import resolve_config
from pgolf.data.paths import resolve_data_paths
from pgolf.errors import TrainingError


def layout(tmp_path, tokenizers, sidecar):
    data = tmp_path / "datasets" / "sample"
    data.mkdir(parents=True)
    (data / "fineweb_val_000000.bin").write_bytes(b"")
    if sidecar:
        (data / "fineweb_val_bytes_000000.bin").write_bytes(b"")
    (tmp_path / "tokenizers").mkdir()
    for name in tokenizers:
        (tmp_path / "tokenizers" / name).write_bytes(b"")
    cfg, _ = resolve_config("smoke", env={}, sets=[f"data.path={data}", "model.vocab_size=8192"])
    return cfg


PLAIN, CASEOPS = "fineweb_8192_bpe.model", "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"


@pytest.mark.parametrize("sidecar,expected", [(True, CASEOPS), (False, PLAIN)])
def test_sidecar_shards_take_the_caseops_tokenizer_plain_shards_the_plain_one(tmp_path, sidecar, expected):
    cfg = layout(tmp_path, [PLAIN, CASEOPS], sidecar)
    assert resolve_data_paths(cfg)[2].endswith("/" + expected)


def test_caseops_folder_alone_finds_its_tokenizer(tmp_path):
    assert resolve_data_paths(layout(tmp_path, [CASEOPS], True))[2].endswith("/" + CASEOPS)


def test_plain_shards_never_pick_a_caseops_tokenizer(tmp_path):
    with pytest.raises(TrainingError, match="no tokenizer found"):
        resolve_data_paths(layout(tmp_path, [CASEOPS], False))
