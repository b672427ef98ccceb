"""Small MovieLens 1B shards, written the way MLPerf's expansion writes them.

As mlcommons/training data_generation/fractal_graph_expansions (util.savez_two_column) does:
shard i holds block i of the user ids; its k-th kept user gets id i * block + k (holes at the
block's end); rows are [user, item] int64 grouped by user, saved by np.savez_compressed as
arr_0; the test shard has one row per kept user, an item not among its train items.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from protocol import storage


@dataclass(frozen=True)
class WrittenShards:
    train: list[np.ndarray]  # per shard, (n, 2) int64 as written
    test: list[np.ndarray]

    @property
    def raw_users(self) -> np.ndarray:
        return np.concatenate([t[:, 0] for t in self.test])


def write_shards(folder: str, shards: int = 3, block: int = 50, num_items: int = 300,
                 seed: int = 0) -> WrittenShards:
    """Writes trainx16x32_{i}.npz and testx16x32_{i}.npz for i < shards into folder (local or gs://)."""
    rng = np.random.default_rng(seed)
    written = WrittenShards([], [])
    for shard in range(shards):
        kept = int(rng.integers(block // 2, block))  # users past `kept` are the block's holes
        train, test = [], []
        for k in range(kept):
            items = rng.choice(num_items, int(rng.integers(2, 40)), replace=False)
            user = shard * block + k
            train += [[user, item] for item in np.sort(items[1:])]
            test.append([user, items[0]])
        written.train.append(np.asarray(train, np.int64))
        written.test.append(np.asarray(test, np.int64))
        save(storage.join(folder, f"trainx16x32_{shard}.npz"), written.train[-1])
        save(storage.join(folder, f"testx16x32_{shard}.npz"), written.test[-1])
    return written


def save(url: str, rows: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, rows)
    storage.write_bytes(url, buffer.getvalue())
