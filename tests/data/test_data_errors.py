"""Bad data is one line naming the file or field and the fix, before any training step."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from pgolf.data.loader import DataLoaderError
from pgolf.data.shards import load_shard, write_shard
from pgolf.errors import TrainingError
from pgolf.run import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import tiny  # noqa: E402


def _copy_corpus(corpus, root: Path) -> dict:
    data = root / "data"
    shutil.copytree(corpus["data_path"], data)
    return dict(corpus, data_path=str(data))


def _poison(path: Path, token: int = 5000) -> None:
    tokens = np.asarray(load_shard(str(path)), dtype=np.int64)
    tokens[len(tokens) // 2] = token
    write_shard(str(path), tokens)


CASES = {
    "missing data folder": (lambda d: [f"data.path={d / 'nope'}"], TrainingError, "is not a folder"),
    "val pattern matches train shards": (lambda d: ["data.val_pattern=fineweb_*.bin"], DataLoaderError,
                                         "data.val_pattern"),
    "train pattern matches val shards": (lambda d: ["data.train_pattern=fineweb_*.bin"], DataLoaderError,
                                         "data.train_pattern"),
    "token outside the vocabulary (train)": ("train", DataLoaderError, "outside model.vocab_size"),
    "token outside the vocabulary (val)": ("val", DataLoaderError, "validation shards"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_fails_in_one_line_before_a_run_folder_exists(embedded_corpus, tmp_path, case):
    make, err, message = CASES[case]
    corpus = _copy_corpus(embedded_corpus, tmp_path)
    data = Path(corpus["data_path"])
    sets = []
    if callable(make):
        sets = make(data)
    else:
        _poison(sorted(data.glob(f"fineweb_{make}_*.bin"))[0])
    out = tmp_path / "run"
    with pytest.raises(err, match=message) as e:
        train(tiny(corpus, *sets), str(out))
    assert "\n" not in str(e.value)
    assert not out.exists()
