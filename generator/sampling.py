"""Training epochs: every positive once plus num_neg negatives each, globally shuffled.

One epoch is made in two stages over a shared buffer of packed examples
(user << 32 | item << 1 | label, one uint64 each), a Rao-Sandelius shuffle:

1. Chunks of whole users (about CHUNK_POSITIVES positives, a cache-sized fixed split of
   the dataset). Per chunk: draw the negatives of its users and put the chunk's examples
   in random order; cut them into one piece per bin, of sizes drawn from a
   multinomial, each copied to its bin's region of the buffer.
2. Bins (about BIN_EXAMPLES examples, also cache-sized). A part is a run of
   consecutive bins, each shuffled and unpacked into the part's columns; then written.

The loops over examples are compiled (generator.kernels). The multinomial cut is the one
serial step; the next slice's is drawn on a thread of its own while this one is sampled.

Uploads to a bucket are decoupled from sampling (protocol.uploads; on local disk a part
is written at once by the worker that made it): a finished part goes to `upload_concurrency` upload
threads (one connection to GCS moves 60-200 MB/s, so throughput comes from many in
flight), and at most `queued_parts` parts (2 x upload_concurrency: the ones uploading
plus as many waiting) are held in memory at once; a worker that would exceed that waits
for an upload to land. `start` returns once every part of the epoch is encoded (the
shared buffer is then free), so the next epoch's sampling overlaps this one's uploads;
its EpochUpload says when they all landed (the caller publishes ready.json only then).

Each example lands in a uniformly random bin and each bin is uniformly shuffled, so
the epoch is a uniformly random permutation (tests/test_generator_kernels.py checks it).

An epoch of several slices (generator.slices: ranges of users, possibly made by different
pods) is made slice by slice, each the same way over its own users, as its own parts: a
uniformly random permutation of the slice. Every random draw comes from an SFC64 stream
seeded by (seed, epoch, purpose, slice) and the chunk or bin: a slice's bytes depend on
nothing else (not on the number of worker threads or pods, nor on which epochs or slices
were made before it).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from protocol import InvalidInput, PartInfo, RunDir, parts, storage
from protocol.parts import id_dtype
from protocol.uploads import Uploads

from . import kernels
from .config import DEFAULT_PART_EXAMPLES, DEFAULT_UPLOAD_CONCURRENCY
from .preprocess import Dataset

CHUNK_POSITIVES = 1 << 15  # about 1.3 MB of examples with 4 negatives: stays in a core's L2
BIN_EXAMPLES = 1 << 17  # 1 MB

# What a random stream is for: SeedSequence(stream_key(...)), then one per chunk or bin.
NEGATIVES, SPLIT, BIN = 0, 1, 2


def stream_key(seed: int, epoch: int, purpose: int, slice_index: int) -> list[int]:
    """The entropy of slice slice_index's streams for `purpose` in epoch `epoch`. Slice 0 keeps
    the key an epoch had before slices existed: one-slice epochs keep their bytes."""
    return [seed, epoch, purpose] + ([slice_index] if slice_index else [])


def parts_for(examples: int, part_examples: int) -> int:
    """Parts of a slice of `examples` examples (at least one, maybe empty)."""
    return max(1, -(-examples // part_examples))


@dataclass(frozen=True)
class EpochLayout:
    """How every epoch of a dataset (or of one slice of it) is cut: chunks of users, bins, parts."""

    num_examples: int
    chunk_users: np.ndarray  # [num_chunks + 1]: chunk c holds users chunk_users[c]:chunk_users[c + 1]
    chunk_examples: np.ndarray  # [num_chunks]
    num_parts: int
    bins_per_part: int

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_examples)

    @property
    def num_bins(self) -> int:
        return self.num_parts * self.bins_per_part

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
            num_parts=parts_for(num_examples, part_examples),
            bins_per_part=max(1, -(-part_examples // BIN_EXAMPLES)),
        )


@dataclass(frozen=True)
class EpochSplit:
    """Epoch k's (or one slice of it) multinomial cut of the chunks into bins, as buffer offsets."""

    piece_starts: np.ndarray  # [num_chunks, num_bins]: where chunk c's piece of bin b goes
    piece_sizes: np.ndarray  # [num_chunks, num_bins]
    bin_bounds: np.ndarray  # [num_bins + 1]

    @staticmethod
    def draw(layout: EpochLayout, key: list[int]) -> EpochSplit:
        rng = np.random.Generator(np.random.SFC64(np.random.SeedSequence(key)))
        sizes = rng.multinomial(layout.chunk_examples, np.full(layout.num_bins, 1 / layout.num_bins))
        bounds = np.concatenate([[0], np.cumsum(sizes.sum(axis=0))])
        starts = bounds[:-1] + np.cumsum(sizes, axis=0) - sizes
        return EpochSplit(starts, sizes, bounds)


@dataclass(frozen=True)
class EpochSlice:
    """One slice of every epoch (generator.slices), as the pod that makes it holds it."""

    index: int
    dataset: Dataset  # the slice's users alone: user u here is user first_user + u of the whole
    first_user: int
    first_part: int  # parts are numbered through the epoch: this slice's first one
    all_users: int  # users of the whole dataset: the width of every part's user column

    @staticmethod
    def whole(dataset: Dataset) -> EpochSlice:
        """An epoch of one slice."""
        return EpochSlice(index=0, dataset=dataset, first_user=0, first_part=0, all_users=dataset.num_users)


class EpochUpload:
    """The uploads of one epoch's (or slice's) parts: result() waits for every one and returns the listing
    in part order (raising the first upload error)."""

    def __init__(self, futures: list[Future]):
        self._futures = futures

    def done(self) -> bool:
        return all(f.done() for f in self._futures)

    def result(self, timeout: float | None = None) -> list[PartInfo]:
        return [f.result(timeout) for f in self._futures]


class EpochWriter:
    """Writes epochs (of a whole dataset, or the slices of them one pod makes) into a run
    directory, with `workers` threads (1: this thread alone) sampling and encoding, and
    `upload_concurrency` threads uploading.

    Threads, not processes: the compiled loops release the GIL, so the workers share the
    buffer and the dataset as plain arrays, and tasks are plain calls. Slices are made one
    after the other through one buffer, the size of the largest."""

    def __init__(self, data: Dataset | list[EpochSlice], seed: int, num_neg: int, workers: int = 1,
                 part_examples: int = DEFAULT_PART_EXAMPLES, upload_concurrency: int = DEFAULT_UPLOAD_CONCURRENCY):
        self.slices = {s.index: s for s in ([EpochSlice.whole(data)] if isinstance(data, Dataset) else data)}
        for piece in self.slices.values():
            _check_negatives_exist(piece)
        self.seed, self.num_neg = seed, num_neg
        self.layouts = {s: EpochLayout.of(piece.dataset, num_neg, part_examples) for s, piece in self.slices.items()}
        _reuse_freed_memory()
        self._buffer = np.empty(max(layout.num_examples for layout in self.layouts.values()), np.uint64)
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="epoch") if workers > 1 else None
        self._uploads = Uploads(upload_concurrency)
        # The next (epoch, slice)'s split, drawn while this one is sampled (see _split).
        self._splitter = ThreadPoolExecutor(1, thread_name_prefix="split")
        self._next_split: tuple[tuple[int, int], Future] | None = None
        self.queued_parts = 2 * upload_concurrency
        self._slots = threading.BoundedSemaphore(self.queued_parts)

    def __enter__(self) -> EpochWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def layout(self) -> EpochLayout:
        """The layout of a one-slice writer's epochs."""
        (layout,) = self.layouts.values()
        return layout

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None
        self._splitter.shutdown(wait=True, cancel_futures=True)
        self._uploads.shutdown()

    def write(self, epoch: int, folder: str, slice_index: int = 0) -> list[PartInfo]:
        """Samples, shuffles and writes epoch `epoch` (its slice slice_index) as parts under
        folder; returns their listing once every part has landed and nothing runs in the
        background (the next split is drawn: whatever the caller times next is not slowed)."""
        listing = self.start(epoch, folder, slice_index).result()
        self._next_split[1].result()
        return listing

    def start(self, epoch: int, folder: str, slice_index: int = 0) -> EpochUpload:
        """Samples and shuffles epoch `epoch`'s slice slice_index and queues its parts' uploads;
        returns when the buffer is free for the next slice (uploads may still be in flight)."""
        piece, layout = self.slices[slice_index], self.layouts[slice_index]
        key = functools.partial(stream_key, self.seed, epoch, slice_index=slice_index)
        split = self._split(epoch, slice_index)
        chunk_streams = kernels.streams(np.random.SeedSequence(key(NEGATIVES)), layout.num_chunks)
        indptr = piece.dataset.indptr
        self._map(self._fill_chunk, [(piece, indptr, layout.chunk_users[c:c + 2], chunk_streams[c],
                                      split.piece_starts[c], split.piece_sizes[c], layout.chunk_examples[c])
                                     for c in range(layout.num_chunks)])
        bin_streams = kernels.streams(np.random.SeedSequence(key(BIN)), layout.num_bins)
        per_part = layout.bins_per_part
        return EpochUpload(self._map(self._write_part, [
            (piece, bin_streams[p * per_part:(p + 1) * per_part], split.bin_bounds[p * per_part:(p + 1) * per_part + 1],
             storage.join(folder, RunDir.part_name(piece.first_part + p)))
            for p in range(layout.num_parts)
        ]))

    def _split(self, epoch: int, slice_index: int) -> EpochSplit:
        """The split of (epoch, slice_index), then the next one's draw begun in the background.

        The multinomial draw is serial (a tenth of an epoch's time on two workers) but numpy
        releases the GIL for it, so the one for what comes next overlaps this one's sampling. It
        comes from its own stream, so a guess that misses (a restart, slices made out of order)
        costs time, never bytes."""
        ahead, self._next_split = self._next_split, None
        if ahead is not None and ahead[0] == (epoch, slice_index):
            split = ahead[1].result()
        else:
            split = self._draw_split(epoch, slice_index)
        following = self._following(epoch, slice_index)
        self._next_split = (following, self._splitter.submit(self._draw_split, *following))
        return split

    def _draw_split(self, epoch: int, slice_index: int) -> EpochSplit:
        return EpochSplit.draw(self.layouts[slice_index], stream_key(self.seed, epoch, SPLIT, slice_index))

    def _following(self, epoch: int, slice_index: int) -> tuple[int, int]:
        """What is made after (epoch, slice_index): this epoch's next slice of this writer, or the next epoch's first."""
        order = list(self.slices)
        at = order.index(slice_index) + 1
        return (epoch, order[at]) if at < len(order) else (epoch + 1, order[0])

    def _map(self, function, tasks: list[tuple]) -> list:
        if self._threads is None:
            return [function(*task) for task in tasks]
        return list(self._threads.map(function, *zip(*tasks)))

    def _fill_chunk(self, piece: EpochSlice, indptr: np.ndarray, users: np.ndarray, stream: np.ndarray,
                    piece_starts: np.ndarray, piece_sizes: np.ndarray, examples: int) -> None:
        """Stage 1: one chunk's positives and negatives, shuffled, cut into the bins' regions."""
        (first, last), dataset = users, piece.dataset
        begin, end = indptr[first], indptr[last]
        out = np.empty(examples, np.uint64)
        kernels.sample_shuffled(indptr[first:last + 1] - begin, dataset.train_items[begin:end],
                                piece.first_user + first, dataset.num_items, self.num_neg, stream,
                                kernels.item_bitmap(dataset.num_items), out)
        kernels.scatter(out, piece_starts, piece_sizes, self._buffer)

    def _write_part(self, piece: EpochSlice, streams: np.ndarray, bin_bounds: np.ndarray, url: str) -> Future:
        """Stage 2: shuffle each of one part's bins, unpack them into the part's columns, queue
        its upload (waiting for a free slot first: memory stays bounded)."""
        self._slots.acquire()
        try:
            encoded = self._encode_part(piece, streams, bin_bounds)
            future = self._uploads.submit(url, parts.write_encoded, url, encoded)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def _encode_part(self, piece: EpochSlice, streams: np.ndarray, bin_bounds: np.ndarray) -> parts.Encoded:
        encoded = parts.empty(bin_bounds[-1] - bin_bounds[0], {
            "user": id_dtype(piece.all_users), "item": id_dtype(piece.dataset.num_items), "label": np.uint8})
        shuffled = np.empty(np.diff(bin_bounds).max(), np.uint64)
        for stream, start, stop in zip(streams, bin_bounds[:-1], bin_bounds[1:]):
            kernels.shuffled_copy(stream, self._buffer[start:stop], shuffled[:stop - start])
            at = slice(start - bin_bounds[0], stop - bin_bounds[0])
            kernels.unpack(shuffled[:stop - start], *(encoded.columns[name][at] for name in ("user", "item", "label")))
        return encoded


def _check_negatives_exist(piece: EpochSlice) -> None:
    dataset = piece.dataset
    full = np.flatnonzero(dataset.train_counts >= dataset.num_items)
    if len(full):
        raise InvalidInput(f"{dataset.name}: user {piece.first_user + full[0]} has a training positive for every one of the "
                           f"{dataset.num_items} items, so no negative can be drawn for them")


def _reuse_freed_memory() -> None:
    """Each chunk and part allocates and frees a few MB. glibc gives such blocks back to the
    kernel, and taking them again costs page faults and zeroing: a third of the time of a
    part. Keep them in the heap instead (allocations over 64 MB, the buffer and the
    dataset, still get their own mappings)."""
    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(m_mmap_threshold, 64 << 20)
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):  # not glibc: slower, not wrong
        pass
