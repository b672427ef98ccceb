"""Eval data: per user the held-out item (column 0) plus eval_negatives sampled items.

`mlperf` mode draws the negatives with replacement from the items the user never rated
(training or held out) and masks repeats after their first occurrence, as MLPerf does;
`paper` mode draws them without replacement (mask all 1). Parts hold whole users of one
slice (generator.slices); each part's draws come from an SFC64 stream seeded by (seed,
part), so the data is deterministic.
"""

from __future__ import annotations

import numpy as np

from protocol import Command, MessageError, PartInfo, RunDir, parts, storage
from protocol.parts import id_dtype

from . import kernels
from .preprocess import Dataset

CELLS_PER_PART = 1 << 24  # items per part (users x candidates): about 50 MB
EVAL_STREAM = 1 << 20  # keeps eval draws apart from every epoch's


def check_feasible(dataset: Dataset, command: Command, source: str) -> None:
    """Every user needs at least one unrated item to draw negatives from."""
    unrated = dataset.num_items - (dataset.train_counts + 1)  # MovieLens has one rating per pair
    worst = int(np.argmin(unrated))
    if unrated[worst] < 1:
        raise MessageError(source, "eval_negatives",
                           f"users with unrated items, but user {worst} of {dataset.name} rated all "
                           f"{dataset.num_items} items", command.eval_negatives)


def users_per_part(command: Command) -> int:
    return max(1, CELLS_PER_PART // (1 + command.eval_negatives))


def parts_per_slice(users: np.ndarray, command: Command) -> list[int]:
    """Eval parts of each slice of users (users: the slices' bounds, generator.slices)."""
    per_part = users_per_part(command)
    return [-(-int(count) // per_part) for count in np.diff(users)]


def write_slice(run: RunDir, dataset: Dataset, first_user: int, first_part: int, command: Command) -> list[PartInfo]:
    """Writes the eval parts of the users of dataset (users first_user, first_user + 1, ... of the
    whole), numbered from first_part; returns their listing. Each part's draws come from
    a stream of (seed, part number): the same bytes however the users are sliced into pods."""
    per_part = users_per_part(command)
    indptr = dataset.indptr
    listing: list[PartInfo] = []
    for index, first in enumerate(range(0, dataset.num_users, per_part), start=first_part):
        last = min(first + per_part, dataset.num_users)
        seed = np.random.SeedSequence([command.seed, EVAL_STREAM, index])
        rated_indptr, rated_item = _rated(dataset, indptr, first, last)
        if command.eval_mode == "mlperf":
            negatives, mask = _with_replacement(rated_indptr, rated_item, command.eval_negatives, dataset.num_items,
                                                kernels.streams(seed, 1)[0])
        else:
            negatives, mask = _without_replacement(rated_indptr, rated_item, command.eval_negatives,
                                                   dataset.num_items, np.random.Generator(np.random.SFC64(seed)))
        held_out = dataset.holdout[first:last, None]
        listing.append(parts.write(storage.join(run.eval_dir, RunDir.part_name(index)), {
            "user": np.arange(first_user + first, first_user + last, dtype=np.uint32),
            "items": np.concatenate([held_out, negatives.astype(held_out.dtype, copy=False)], axis=1),
            "mask": np.concatenate([np.ones_like(held_out, np.uint8), mask], axis=1),
        }))
    return listing


def _rated(dataset: Dataset, indptr: np.ndarray, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Every rating of users first..last-1 (training and held out): local user u rated
    item[rated_indptr[u]:rated_indptr[u + 1]]."""
    begin = indptr[first]
    held_out_at = indptr[first + 1:last + 1] - begin  # after each user's training items
    item = np.insert(dataset.train_items[begin:indptr[last]], held_out_at, dataset.holdout[first:last])
    return np.concatenate([[0], np.cumsum(dataset.train_counts[first:last] + 1)]), item


def _with_replacement(rated_indptr, rated_item, count: int, num_items: int,
                      stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """count iid draws per user from their unrated items; mask 0 on repeats after the first."""
    items = np.empty((len(rated_indptr) - 1, count), id_dtype(num_items))  # 16-bit ids sort by radix
    kernels.draw_unrated(rated_indptr, rated_item, num_items, stream, kernels.item_bitmap(num_items), items)
    # A stable sort within each row puts a value's first occurrence before its repeats.
    order = np.argsort(items, axis=1, kind="stable")
    ordered = np.take_along_axis(items, order, axis=1)
    mask = np.ones(items.shape, np.uint8)
    np.put_along_axis(mask, order[:, 1:], (ordered[:, 1:] != ordered[:, :-1]).astype(np.uint8), axis=1)
    return items, mask


def _without_replacement(rated_indptr, rated_item, count: int, num_items: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """count distinct draws per user from their unrated items.

    A user with fewer unrated items than count (ml-100k has users who rated over 700 of
    1,682 items, so 999 do not fit) gets all of them; the padding is masked out, as a
    ranking over the items that exist is the only honest one.
    """
    users = len(rated_indptr) - 1
    negatives = np.empty((users, count), np.int64)
    mask = np.ones((users, count), np.uint8)
    unrated = np.ones(num_items, bool)
    for u in range(users):
        mine = rated_item[rated_indptr[u]:rated_indptr[u + 1]]
        unrated[mine] = False
        pool = np.flatnonzero(unrated)
        if len(pool) >= count:
            negatives[u] = rng.choice(pool, count, replace=False)
        else:
            negatives[u, :len(pool)] = rng.permutation(pool)
            negatives[u, len(pool):] = pool[0]
            mask[u, len(pool):] = 0
        unrated[mine] = True
    return negatives, mask
