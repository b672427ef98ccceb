"""Uniform draws from the items a user has not rated, by rejection against a bitmap.

The bitmap covers one group of users (a chunk, a block of eval users): rows x items bits,
small enough to stay in cache for the chunk sizes used here. A user has rated a small
share of all items, so few draws are rejected; redraws repeat only those.
"""

from __future__ import annotations

import numpy as np


class RatedItems:
    """Which (row, item) pairs are rated, one bit each; rows are users local to a group."""

    def __init__(self, row: np.ndarray, item: np.ndarray, rows: int, num_items: int):
        self.num_items = num_items
        key = row.astype(np.int64) * num_items + item
        self.bits = np.zeros((rows * num_items + 7) // 8, np.uint8)
        np.bitwise_or.at(self.bits, key >> 3, np.left_shift(1, key & 7).astype(np.uint8))

    def contains(self, key: np.ndarray) -> np.ndarray:
        return (self.bits[key >> 3] >> (key & 7).astype(np.uint8)) & 1 == 1

    def draw_unrated(self, row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each entry of row, an item (uint32) that row has not rated, uniformly."""
        base = row.astype(np.int64) * self.num_items
        items = rng.integers(0, self.num_items, len(row), dtype=np.uint32)  # twice as fast as int64
        todo = np.flatnonzero(self.contains(base + items))
        while len(todo):
            items[todo] = rng.integers(0, self.num_items, len(todo), dtype=np.uint32)
            todo = todo[self.contains(base[todo] + items[todo])]
        return items
