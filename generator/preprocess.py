"""The NCF / MLPerf split (DESIGN.md "Data and evaluation").

Keep users with at least 20 ratings, re-index users and items from 0 (items: only those
that remain), sort each user's ratings by timestamp, hold out the last one for evaluation;
the rest are training positives. Ratings with the same timestamp keep their order in the
file (a stable sort): deterministic, and it matches the reference numbers (most-popular
HR@10 0.109 on ml-100k), whereas breaking ties by item id holds out systematically
higher, less popular ids (0.064) and makes every model look worse.

The maps from dense index back to raw id are kept (Dataset.user_ids / item_ids) and
published beside meta.json (dataset/ids/), so the served model takes raw ids.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from protocol import DatasetMeta, InvalidInput
from protocol.parts import id_dtype

from .ratings import RawRatings

MIN_RATINGS = 20


@dataclass(frozen=True)
class Dataset:
    """A preprocessed dataset: per user a held-out item and training positives (CSR)."""

    name: str
    fingerprint: str
    num_users: int
    num_items: int
    num_ratings: int  # raw rows read
    train_counts: np.ndarray  # int64 [num_users]: training positives per user
    train_items: np.ndarray  # id_dtype(num_items) [num_train], grouped by user, oldest first
    holdout: np.ndarray  # id_dtype(num_items) [num_users]: each user's latest item
    # Dense index -> raw id (MovieLens' own user / movie numbers; the synthetic recipe's
    # numbers), int64, increasing. None: the identity (datasets built without them).
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None

    @property
    def num_train(self) -> int:
        return len(self.train_items)

    @property
    def indptr(self) -> np.ndarray:
        """User u's training items are train_items[indptr[u]:indptr[u + 1]]."""
        return np.concatenate([[0], np.cumsum(self.train_counts)])

    @property
    def raw_user_ids(self) -> np.ndarray:
        return np.arange(self.num_users, dtype=np.int64) if self.user_ids is None else self.user_ids

    @property
    def raw_item_ids(self) -> np.ndarray:
        return np.arange(self.num_items, dtype=np.int64) if self.item_ids is None else self.item_ids

    def meta(self, run_id: str) -> DatasetMeta:
        return self.index().meta(run_id)

    def index(self) -> DatasetIndex:
        """Its sizes, with every user a block of its own."""
        return DatasetIndex(name=self.name, fingerprint=self.fingerprint, num_users=self.num_users,
                            num_items=self.num_items, num_ratings=self.num_ratings,
                            block_users=np.arange(self.num_users + 1), block_train=self.train_counts)

    def users(self, first: int, last: int) -> Dataset:
        """Users first..last-1 alone (user u of the result is user first + u of this one)."""
        indptr = self.indptr
        return dataclasses.replace(
            self, num_users=last - first, train_counts=self.train_counts[first:last],
            train_items=self.train_items[indptr[first]:indptr[last]], holdout=self.holdout[first:last],
            user_ids=None if self.user_ids is None else self.user_ids[first:last])


@dataclass(frozen=True)
class DatasetIndex:
    """What every generator pod knows of a dataset before loading any of its users: the sizes, and
    blocks of dense user ids that load on their own (datasets.load_users), with their training
    positives. Slices of an epoch (contiguous user ranges balanced by positives) are cut at
    block bounds. A dataset held in memory has one block per user; MovieLens 1B has one per
    published shard."""

    name: str
    fingerprint: str
    num_users: int
    num_items: int
    num_ratings: int  # raw rows read
    block_users: np.ndarray  # int64 [num_blocks + 1]: block b holds users block_users[b]:block_users[b + 1]
    block_train: np.ndarray  # int64 [num_blocks]: training positives per block
    user_ids: np.ndarray | None = None  # int64 [num_users]: dense -> raw user id; None: the identity

    @property
    def num_train(self) -> int:
        return int(self.block_train.sum())

    @property
    def raw_user_ids(self) -> np.ndarray:
        return np.arange(self.num_users, dtype=np.int64) if self.user_ids is None else self.user_ids

    def meta(self, run_id: str) -> DatasetMeta:
        return DatasetMeta(run_id=run_id, dataset=self.name, fingerprint=self.fingerprint,
                           num_users=self.num_users, num_items=self.num_items,
                           num_ratings=self.num_ratings, num_train=self.num_train)


def split(name: str, raw: RawRatings) -> Dataset:
    keep = _active_users(raw.user)
    user, user_ids = _dense_ids(raw.user[keep])
    item, item_ids = _dense_ids(raw.item[keep])
    num_users, num_items = len(user_ids), len(item_ids)
    if num_users == 0 or num_items < 2:
        raise InvalidInput(f"{name}: {num_users} users with at least {MIN_RATINGS} ratings and "
                           f"{num_items} items among them; expected at least 1 user and 2 items")
    user, item = _sort_by_user_then_time(user, item, raw.timestamp[keep])
    counts = np.bincount(user, minlength=num_users)
    last = np.cumsum(counts) - 1  # each user's latest rating
    train = np.ones(len(user), bool)
    train[last] = False
    ids = id_dtype(num_items)
    return Dataset(name=name, fingerprint=raw.fingerprint, num_users=num_users, num_items=num_items,
                   num_ratings=len(raw), train_counts=counts - 1, train_items=item[train].astype(ids),
                   holdout=item[last].astype(ids), user_ids=user_ids, item_ids=item_ids)


def _active_users(user: np.ndarray) -> np.ndarray:
    ids, values = _dense_ids(user)
    return np.bincount(ids, minlength=len(values))[ids] >= MIN_RATINGS


def _dense_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps ids to 0..n-1 in the order of their values; returns the new ids and the n
    distinct values, increasing (new id k stands for values[k]; int64)."""
    if len(ids) and 0 <= ids.min() and ids.max() < 4 * len(ids) + (1 << 20):
        # Ids are small (MovieLens numbers them 1..n): a lookup table, no sort.
        present = np.zeros(int(ids.max()) + 1, bool)
        present[ids] = True
        new_id = np.cumsum(present) - 1
        return new_id[ids], np.flatnonzero(present).astype(np.int64)
    order = _argsort(ids - ids.min())
    ordered = ids[order]
    first = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    new_id = np.empty(len(ids), np.int64)
    new_id[order] = np.cumsum(first) - 1
    return new_id, ordered[first].astype(np.int64)


def _argsort(values: np.ndarray) -> np.ndarray:
    """np.argsort of non-negative ints, several times faster where (value, index) packs in 64 bits:
    numpy's plain sort is vectorized, its argsort much less so."""
    index_bits = max(1, (len(values) - 1).bit_length())
    if _bits(values) + index_bits > 64:
        return np.argsort(values)
    packed = (values.astype(np.uint64) << np.uint64(index_bits)) | np.arange(len(values), dtype=np.uint64)
    packed.sort()
    return (packed & np.uint64((1 << index_bits) - 1)).astype(np.int64)


def _sort_by_user_then_time(user, item, timestamp) -> tuple[np.ndarray, np.ndarray]:
    """Stable sort by (user, timestamp): one packed uint64 key when it fits, else lexsort."""
    time = timestamp - timestamp.min()
    if _bits(user) + _bits(time) > 64:
        time, _ = _dense_ids(timestamp)  # ranks keep the order in fewer bits
    if _bits(user) + _bits(time) > 64:
        order = np.lexsort((timestamp, user))
    else:
        key = (user.astype(np.uint64) << np.uint64(_bits(time))) | time.astype(np.uint64)
        order = np.argsort(key, kind="stable")
    return user[order], item[order]


def _bits(values: np.ndarray) -> int:
    return int(values.max()).bit_length() if len(values) else 0
