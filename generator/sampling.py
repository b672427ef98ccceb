"""Training epochs: every positive once plus num_neg negatives each, globally shuffled.

One epoch is made in two stages over a shared buffer of packed examples
(user << 32 | item << 1 | label, one uint64 each), a Rao-Sandelius shuffle:

1. Chunks of whole users (about CHUNK_POSITIVES positives; a fixed split of the dataset).
   Per chunk: draw the negatives of its users (generator.unrated: rejection against a
   bitmap of the chunk's training positives), shuffle the chunk, and cut it into
   one piece per slice, of sizes drawn from a multinomial, copied to that slice's region.
2. Slices (about SLICE_EXAMPLES examples, also cache-sized). Shuffle each in place; a
   part is a run of consecutive slices, unpacked into columns and written.

Each example lands in a uniformly random slice and each slice is uniformly shuffled, so
the epoch is a uniformly random permutation. Every random draw comes from a generator
seeded by (seed, epoch, stream, index): an epoch's bytes depend on nothing else (not on
the number of worker processes, nor on which epochs were made before it).

Worker processes are forked after the buffer (an anonymous shared mapping) and the
dataset exist, so they share both without copying; tasks carry only indices.
"""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass

import numpy as np

from protocol import InvalidInput, PartInfo, RunDir, parts, storage
from protocol.parts import id_dtype

from .preprocess import Dataset
from .unrated import RatedItems

CHUNK_POSITIVES = 1 << 16
SLICE_EXAMPLES = 1 << 17
DEFAULT_PART_EXAMPLES = 1_000_000

# Streams of random numbers, one generator per (seed, epoch, stream, index).
NEGATIVES, SPLIT, SLICE = 0, 1, 2


def random_generator(seed: int, *key: int) -> np.random.Generator:
    # SFC64: a sound generator, and shuffles (the bulk of the work) run 13% faster than on PCG64.
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, *key])))


@dataclass(frozen=True)
class EpochLayout:
    """How every epoch of a dataset is cut: chunks of users, slices, parts."""

    num_examples: int
    chunk_users: np.ndarray  # [num_chunks + 1]: chunk c holds users chunk_users[c]:chunk_users[c + 1]
    chunk_examples: np.ndarray  # [num_chunks]
    num_parts: int
    slices_per_part: int

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_examples)

    @property
    def num_slices(self) -> int:
        return self.num_parts * self.slices_per_part

    @staticmethod
    def of(dataset: Dataset, num_neg: int, part_examples: int) -> EpochLayout:
        indptr = dataset.indptr
        cuts = np.searchsorted(indptr, np.arange(CHUNK_POSITIVES, dataset.num_train, CHUNK_POSITIVES))
        bounds = np.concatenate([[0], cuts, [dataset.num_users]])
        bounds = bounds[np.concatenate([[True], bounds[1:] != bounds[:-1]])]  # drop empty chunks
        num_examples = dataset.num_train * (1 + num_neg)
        return EpochLayout(
            num_examples=num_examples,
            chunk_users=bounds,
            chunk_examples=np.diff(indptr[bounds]) * (1 + num_neg),
            num_parts=max(1, -(-num_examples // part_examples)),
            slices_per_part=max(1, -(-part_examples // SLICE_EXAMPLES)),
        )


@dataclass(frozen=True)
class EpochSplit:
    """Epoch k's multinomial cut of the chunks into slices, as buffer offsets."""

    piece_starts: np.ndarray  # [num_chunks, num_slices]: where chunk c's piece of slice s goes
    piece_sizes: np.ndarray  # [num_chunks, num_slices]
    slice_bounds: np.ndarray  # [num_slices + 1]

    @staticmethod
    def draw(layout: EpochLayout, seed: int, epoch: int) -> EpochSplit:
        even = np.full(layout.num_slices, 1.0 / layout.num_slices)
        sizes = np.stack([random_generator(seed, epoch, SPLIT, c).multinomial(n, even)
                          for c, n in enumerate(layout.chunk_examples)])
        bounds = np.concatenate([[0], np.cumsum(sizes.sum(axis=0))])
        starts = bounds[:-1] + np.cumsum(sizes, axis=0) - sizes
        return EpochSplit(starts, sizes, bounds)


@dataclass
class _Shared:
    """What the workers read: set in the parent before the pool forks."""

    dataset: Dataset
    indptr: np.ndarray
    layout: EpochLayout
    seed: int
    num_neg: int
    buffer: np.ndarray  # uint64 [num_examples], in shared memory


_shared: _Shared | None = None


class EpochWriter:
    """Writes epochs into a run directory, with `workers` processes (1: in this process)."""

    def __init__(self, dataset: Dataset, seed: int, num_neg: int, workers: int = 1,
                 part_examples: int = DEFAULT_PART_EXAMPLES):
        global _shared
        _check_negatives_exist(dataset)
        self.layout = EpochLayout.of(dataset, num_neg, part_examples)
        self._memory = mmap.mmap(-1, self.layout.num_examples * 8)  # shared with forked workers
        _shared = _Shared(dataset, dataset.indptr, self.layout, seed, num_neg,
                          np.frombuffer(self._memory, dtype=np.uint64))
        self._pool = None
        self._workers = workers
        if workers > 1:
            self._pool = multiprocessing.get_context("fork").Pool(
                workers, initializer=_die_with_parent, initargs=(os.getpid(),))

    def __enter__(self) -> EpochWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def write(self, epoch: int, folder: str) -> list[PartInfo]:
        """Samples, shuffles and writes epoch `epoch` as parts under folder; returns their listing."""
        split = EpochSplit.draw(self.layout, _shared.seed, epoch)
        self._map(_fill_chunk, [(epoch, c, split.piece_starts[c], split.piece_sizes[c])
                                for c in range(self.layout.num_chunks)])
        per_part = self.layout.slices_per_part
        return self._map(_write_part, [
            (epoch, p, split.slice_bounds[p * per_part:(p + 1) * per_part + 1],
             storage.join(folder, RunDir.part_name(p)))
            for p in range(self.layout.num_parts)
        ])

    def _map(self, function, tasks: list[tuple]) -> list:
        if self._pool is None:
            return [function(*task) for task in tasks]
        # Small batches: the stage ends with its slowest worker, so keep the last batches short.
        return self._pool.starmap(function, tasks, chunksize=max(1, len(tasks) // (32 * self._workers)))


def _fill_chunk(epoch: int, chunk: int, piece_starts: np.ndarray, piece_sizes: np.ndarray) -> None:
    """Stage 1: one chunk's positives and negatives, shuffled, cut into the slices' regions."""
    s = _shared
    first, last = s.layout.chunk_users[chunk], s.layout.chunk_users[chunk + 1]
    begin, end = s.indptr[first], s.indptr[last]
    rng = random_generator(s.seed, epoch, NEGATIVES, chunk)
    local_user = np.repeat(np.arange(last - first), s.dataset.train_counts[first:last])
    positives = s.dataset.train_items[begin:end]
    rated = RatedItems(local_user, positives, last - first, s.dataset.num_items)
    negatives = rated.draw_unrated(np.repeat(local_user, s.num_neg), rng)  # num_neg per positive, in a row
    user_bits = (local_user + first).astype(np.uint64) << np.uint64(32)
    count = end - begin
    examples = np.empty(count * (1 + s.num_neg), np.uint64)
    np.left_shift(positives, 1, out=examples[:count], dtype=np.uint64)
    examples[:count] |= user_bits | np.uint64(1)
    negative_rows = examples[count:].reshape(count, s.num_neg)
    np.left_shift(negatives.reshape(count, s.num_neg), 1, out=negative_rows, dtype=np.uint64)
    negative_rows |= user_bits[:, None]
    rng.shuffle(examples)
    # Cut into pieces: the next piece_sizes[j] examples go to piece_starts[j] onwards (a loop
    # of slice copies beats one fancy-indexed scatter here).
    offset = 0
    for start, size in zip(piece_starts.tolist(), piece_sizes.tolist()):
        s.buffer[start:start + size] = examples[offset:offset + size]
        offset += size


def _write_part(epoch: int, part: int, slice_bounds: np.ndarray, url: str) -> PartInfo:
    """Stage 2: shuffle one part's slices in place, unpack, write."""
    s = _shared
    first_slice = part * s.layout.slices_per_part
    for i, (start, stop) in enumerate(zip(slice_bounds[:-1], slice_bounds[1:])):
        random_generator(s.seed, epoch, SLICE, first_slice + i).shuffle(s.buffer[start:stop])
    words = s.buffer[slice_bounds[0]:slice_bounds[-1]].view(np.uint32)  # (low, high) word pairs
    low, high = (words[0::2], words[1::2]) if sys.byteorder == "little" else (words[1::2], words[0::2])
    columns = {
        "user": high.astype(id_dtype(s.dataset.num_users)),
        "item": np.empty(len(low), id_dtype(s.dataset.num_items)),
        "label": np.empty(len(low), np.uint8),
    }
    # One pass each, narrowing as they go (values fit: ids < num_items, labels 0 or 1).
    np.right_shift(low, 1, out=columns["item"], casting="unsafe")
    np.bitwise_and(low, 1, out=columns["label"], casting="unsafe")
    return parts.write(url, columns)


def _check_negatives_exist(dataset: Dataset) -> None:
    full = np.flatnonzero(dataset.train_counts >= dataset.num_items)
    if len(full):
        raise InvalidInput(f"{dataset.name}: user {full[0]} has a training positive for every one of the "
                           f"{dataset.num_items} items, so no negative can be drawn for them")


def _die_with_parent(parent: int) -> None:
    """Pool worker initializer: a worker whose parent is killed (kill -9) must not linger."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):  # elsewhere: no such call; orphans end with the pod
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
