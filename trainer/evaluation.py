"""HR@10 and NDCG@10 under the NCF / MLPerf protocol (DESIGN.md "Data and evaluation").

Per user: candidates[0] is the held-out positive, the others are negatives; mask 0 marks
a duplicate negative to ignore (mlperf mode). rank = number of valid negatives scoring
>= the positive (ties count against it). HR@10 = mean(rank < 10); NDCG@10 =
mean(log 2 / log(rank + 2)) over hits, 0 for misses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

TOP_K = 10


def ranks(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """scores, mask: [users, 1 + negatives]. Returns the positive's rank per user (int64)."""
    scores = np.asarray(scores, dtype=np.float32)
    positive = scores[:, :1]
    beaten = (scores[:, 1:] >= positive) & (np.asarray(mask[:, 1:]) != 0)
    rank = beaten.sum(axis=1, dtype=np.int64)
    # A NaN positive compares False with everything: count it as a miss, never a hit.
    rank[~np.isfinite(positive[:, 0])] = scores.shape[1]
    return rank


def hit_and_ndcg(rank: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    hit = rank < k
    ndcg = np.where(hit, math.log(2) / np.log(rank.astype(np.float64) + 2), 0.0)
    return hit, ndcg


def metrics(rank: np.ndarray, k: int = TOP_K) -> tuple[float, float]:
    hit, ndcg = hit_and_ndcg(rank, k)
    return float(hit.mean()), float(ndcg.mean())


def evaluate(score: Callable[[np.ndarray, np.ndarray], np.ndarray], users: np.ndarray, items: np.ndarray,
             mask: np.ndarray, batch_candidates: int) -> tuple[float, float]:
    """(HR@10, NDCG@10) of every user (see all_ranks)."""
    return metrics(all_ranks(score, users, items, mask, batch_candidates))


def all_ranks(score: Callable[[np.ndarray, np.ndarray], np.ndarray], users: np.ndarray, items: np.ndarray,
              mask: np.ndarray, batch_candidates: int) -> np.ndarray:
    """Scores every candidate, a block of whole users at a time, and returns each user's rank.

    score(user_ids [n], item_ids [n]) -> logits [n] (or [n, 1]). Memory is bounded by
    batch_candidates scores, not by users x candidates.
    """
    num_users, width = items.shape
    block = max(1, batch_candidates // width)
    out = np.empty(num_users, dtype=np.int64)
    for start in range(0, num_users, block):
        stop = min(start + block, num_users)
        block_items = items[start:stop]
        block_users = np.repeat(users[start:stop], width)
        logits = np.asarray(score(block_users, block_items.reshape(-1))).reshape(stop - start, width)
        out[start:stop] = ranks(logits, mask[start:stop])
    return out
