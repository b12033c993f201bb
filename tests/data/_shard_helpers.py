"""Synthetic shards for the loader tests."""

import numpy as np

from pgolf.data.shards import write_shard


def position_shards(tmp_path, sizes, prefix="fineweb_train_") -> list[str]:
    """Shards whose tokens are their global positions (mod 2^16), so a window names its source."""
    files, start = [], 0
    for i, n in enumerate(sizes):
        p = tmp_path / f"{prefix}{i:06d}.bin"
        write_shard(p, np.arange(start, start + n) % 65536)
        files.append(str(p))
        start += n
    return files
