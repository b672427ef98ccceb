"""MovieLens 1B (ml-20mx16x32): MLPerf's published shards, read as they are (already split).

The format, as MLPerf's writer and readers have it:
- mlcommons/training data_generation/fractal_graph_expansions/graph_expansion.py and util.py
  (commit 7c2fb6fe): shard i of the expansion is written by `util.savez_two_column`, that is
  `np.savez_compressed(name, np.asarray(rows))`: one array `arr_0`, (n, 2) int64, columns user
  and item, rows grouped by user. The k-th user kept in shard i gets id i * block + k: users
  are contiguous from the start of each block, and the rows dropped (no train or no test item)
  leave the holes at the block's end. The test shard keeps one item (the first) per user kept
  in the train shard. Item ids are global and 0-based.
- mlcommons/training recommendation/pytorch/convert.py (commit 6119bbb3), the v0.6 reference
  converter: loads `trainx16x32_{i}.npz` and `testx16x32_{i}.npz`, `['arr_0']`, for i in
  0..15; counts the users as the distinct users of each chunk ("some generated users do not
  have any ratings. Therefore, nb_users should not be max_user_index+1") and the items as
  the largest item id + 1 ("Zero is valid item").

Here the users are compacted to dense ids in shard order (the raw ids are kept for serving);
items keep their ids (num_items = the largest + 1, as MLPerf counts them). A generator pod
reads only the shards that hold its users; what every pod needs up front (the index) comes
from the test shards (one row per user, 35 MB in all) and from the first bytes of each train
shard (its array header gives its number of rows), never from the 1.2 billion train rows.
With all 16 shards the published counts are checked: a damaged or different copy stops the
run with exit code 2 before any epoch is made.
"""

from __future__ import annotations

import hashlib
import io
import re
import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.lib import format as npy

from protocol import InvalidInput, storage
from protocol.parts import id_dtype

from .preprocess import Dataset, DatasetIndex

NAME = "ml-20mx16x32"
SHARDS = 16  # the full published set
PUBLISHED = {"train interactions": 1_223_962_043, "users": 2_197_225, "items": 855_776}
_SHARD = re.compile(r"^(train|test)x16x32_(\d+)\.npz$")
_HEAD_BYTES = 1 << 16  # a zip entry's local header plus the start of its deflated .npy header


@dataclass(frozen=True)
class Shard:
    """One published pair of files, with its users as read from the test file."""

    train_url: str
    test_url: str
    raw_users: np.ndarray  # int64, increasing: the shard's users, one per test row
    holdout: np.ndarray  # int64: each user's test item
    train_rows: int  # from the train file's array header


class MovieLens1B:
    """The shards in folder `url` (the tarball's `ml-20mx16x32/`, or the folder holding it)."""

    def __init__(self, url: str):
        self.url = _shard_folder(url)

    @cached_property
    def shards(self) -> list[Shard]:
        names = {}
        for name in storage.listdir(self.url):
            match = _SHARD.match(name)
            if match:
                names.setdefault(int(match[2]), {})[match[1]] = storage.join(self.url, name)
        if not names or sorted(names) != list(range(len(names))) or any(len(n) != 2 for n in names.values()):
            found = ", ".join(sorted(f.rsplit("/", 1)[-1] for n in names.values() for f in n.values())) or "none"
            raise InvalidInput(f"{self.url}: expected {NAME}'s shards trainx16x32_i.npz and testx16x32_i.npz for "
                               f"i = 0, 1, ... (all 16 from GroupLens' ml-20mx16x32.tar); found {found}")
        return [_read_shard(names[i]["train"], names[i]["test"]) for i in range(len(names))]

    @cached_property
    def block_users(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([len(s.raw_users) for s in self.shards])])

    @cached_property
    def raw_users(self) -> np.ndarray:
        """Dense user -> raw user id (int64, increasing), every shard's users in shard order."""
        return np.concatenate([s.raw_users for s in self.shards])

    @cached_property
    def fingerprint(self) -> str:
        """Of every test row and every train shard's size: what the index is made of."""
        digest = hashlib.sha256()
        for shard in self.shards:
            digest.update(shard.raw_users.tobytes() + shard.holdout.tobytes() + str(shard.train_rows).encode())
        return "sha256:" + digest.hexdigest()

    def index(self) -> DatasetIndex:
        return self._index

    @cached_property
    def _index(self) -> DatasetIndex:
        train = np.array([s.train_rows for s in self.shards], np.int64)
        num_users = int(self.block_users[-1])
        num_items = PUBLISHED["items"] if len(self.shards) == SHARDS else self._largest_item() + 1
        if len(self.shards) == SHARDS:
            self._check_published(int(train.sum()), num_users)
        for shard in self.shards:
            if len(shard.holdout) and not 0 <= shard.holdout.min() <= shard.holdout.max() < num_items:
                raise InvalidInput(f"{shard.test_url}: test items from {shard.holdout.min()} to "
                                   f"{shard.holdout.max()}; expected 0 to {num_items - 1}")
        return DatasetIndex(name=NAME, fingerprint=self.fingerprint, num_users=num_users, num_items=num_items,
                            num_ratings=int(train.sum()) + num_users, block_users=self.block_users,
                            block_train=train, user_ids=self.raw_users)

    def load_users(self, first: int, last: int) -> Dataset:
        """Dense users first..last-1, read from the shards that hold them alone."""
        index, bounds = self.index(), self.block_users
        if not 0 <= first < last <= index.num_users:
            raise ValueError(f"users {first}..{last - 1} of {index.num_users}")
        counts, items = [], []
        for b in range(np.searchsorted(bounds, first, "right") - 1, np.searchsorted(bounds, last, "left")):
            shard_counts, shard_items = _train_rows(self.shards[b], index.num_items)
            lo, hi = max(first, bounds[b]) - bounds[b], min(last, bounds[b + 1]) - bounds[b]
            indptr = np.concatenate([[0], np.cumsum(shard_counts)])
            counts.append(shard_counts[lo:hi])
            items.append(shard_items[indptr[lo]:indptr[hi]])
        ids = id_dtype(index.num_items)
        holdout = np.concatenate([s.holdout for s in self.shards])
        return Dataset(name=NAME, fingerprint=index.fingerprint, num_users=last - first, num_items=index.num_items,
                       num_ratings=index.num_ratings, train_counts=np.concatenate(counts),
                       train_items=np.concatenate(items).astype(ids, copy=False), holdout=holdout[first:last].astype(ids),
                       user_ids=self.raw_users[first:last])

    def _largest_item(self) -> int:
        """A set of fewer than 16 shards (a test-sized one) is read whole for its item count."""
        return max(max(int(s.holdout.max()), int(_load_array(s.train_url)[:, 1].max())) for s in self.shards)

    def _check_published(self, train: int, users: int) -> None:
        found = {"train interactions": train, "users": users}
        wrong = [f"{what} {found[what]:,} (published: {PUBLISHED[what]:,})" for what in found
                 if found[what] != PUBLISHED[what]]
        if wrong:
            raise InvalidInput(f"{self.url}: these 16 shards are not GroupLens' {NAME}: {', '.join(wrong)}")


def _shard_folder(url: str) -> str:
    names = storage.listdir(url)
    if "ml-20mx16x32" in names and not any(_SHARD.match(n) for n in names):
        return storage.join(url, "ml-20mx16x32")
    if not names:
        raise InvalidInput(f"{url}: no such folder or an empty one (dataset.ratings for {NAME} names the folder "
                           f"of its shards)")
    return url


def _read_shard(train_url: str, test_url: str) -> Shard:
    test = _load_array(test_url)
    users = test[:, 0]
    if len(users) and np.any(users[1:] <= users[:-1]):
        raise InvalidInput(f"{test_url}: expected one row per user in increasing user order")
    return Shard(train_url, test_url, users, test[:, 1], _rows_in_header(train_url))


def _load_array(url: str) -> np.ndarray:
    """The (n, 2) int64 array arr_0 of one .npz."""
    try:
        with np.load(io.BytesIO(storage.read_bytes(url))) as npz:
            array = npz["arr_0"]
    except FileNotFoundError:
        raise InvalidInput(f"{url}: shard not found") from None
    except (ValueError, KeyError, OSError, EOFError) as error:
        raise InvalidInput(f"{url}: not an .npz with an array arr_0 ({error})") from None
    _check_layout(url, array.shape, array.dtype)
    return array


def _check_layout(url: str, shape: tuple, dtype: np.dtype) -> None:
    if len(shape) != 2 or shape[1] != 2 or dtype != np.int64:
        raise InvalidInput(f"{url}: arr_0 is {dtype} {shape}; expected int64 (n, 2) rows of user, item")


def _rows_in_header(url: str) -> int:
    """The rows of arr_0, from the head of the file alone: the zip entry's local header
    (PKWARE APPNOTE 4.3.7) and the start of its deflated .npy header."""
    head = storage.read_bytes(url, 0, _HEAD_BYTES)
    if head[:4] != b"PK\x03\x04":
        raise InvalidInput(f"{url}: not an .npz (a zip) file")
    method, name_length, extra_length = int.from_bytes(head[8:10], "little"), \
        int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
    name = head[30:30 + name_length]
    body = head[30 + name_length + extra_length:]
    if name != b"arr_0.npy" or method not in (0, 8):
        raise InvalidInput(f"{url}: expected the .npz entry arr_0.npy, stored or deflated; found {name!r}")
    data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(body, 4096) if method == 8 else body
    stream = io.BytesIO(data)
    try:
        version = npy.read_magic(stream)
        shape, _, dtype = npy.read_array_header_1_0(stream) if version == (1, 0) else \
            npy.read_array_header_2_0(stream)
    except ValueError as error:
        raise InvalidInput(f"{url}: arr_0.npy has no readable array header ({error})") from None
    _check_layout(url, shape, dtype)
    return int(shape[0])


def _train_rows(shard: Shard, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Training positives per user of the shard, and the items (uint32) grouped by user."""
    rows = _load_array(shard.train_url)
    if len(rows) != shard.train_rows:
        raise InvalidInput(f"{shard.train_url}: changed while being read ({len(rows)} rows, "
                           f"{shard.train_rows} when first seen)")
    users, items = rows[:, 0], rows[:, 1]
    if len(users) and np.any(users[1:] < users[:-1]):
        raise InvalidInput(f"{shard.train_url}: expected rows grouped by user in increasing order")
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        raise InvalidInput(f"{shard.train_url}: item ids from {items.min()} to {items.max()}; "
                           f"expected 0 to {num_items - 1}")
    starts = np.searchsorted(users, shard.raw_users)
    ends = np.searchsorted(users, shard.raw_users, side="right")
    counts = ends - starts
    if counts.sum() != len(users):
        raise InvalidInput(f"{shard.train_url}: has rows of users that its test file "
                           f"{shard.test_url.rsplit('/', 1)[-1]} does not list")
    return counts.astype(np.int64), items.astype(np.uint32)
