"""Shared fixtures: the embedded corpus (prepared once per session) and shared-data paths."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SHARED_TOKENIZER = SHARED / "tokenizers" / "fineweb_1024_bpe.model"


@pytest.fixture(scope="session")
def embedded_corpus(tmp_path_factory):
    from pgolf.data.corpus import prepare_embedded_corpus
    return prepare_embedded_corpus(str(tmp_path_factory.mktemp("pgolf_cache")), log=lambda *_: None)


@pytest.fixture(scope="session")
def shared_tokenizer():
    if not SHARED_TOKENIZER.is_file():
        pytest.skip(f"shared tokenizer absent: {SHARED_TOKENIZER} (the challenge's fineweb_1024_bpe.model)")
    return str(SHARED_TOKENIZER)
