"""Training epochs: every positive once plus num_neg negatives each, globally shuffled.

One epoch is made in two stages over a shared buffer of packed examples
(user << 32 | item << 1 | label, one uint64 each), a Rao-Sandelius shuffle:

1. Chunks of whole users (about CHUNK_POSITIVES positives, a cache-sized fixed split of
   the dataset). Per chunk: draw the negatives of its users and put the chunk's examples
   in random order; cut them into one piece per slice, of sizes drawn from a
   multinomial, each copied to its slice's region of the buffer.
2. Slices (about SLICE_EXAMPLES examples, also cache-sized). A part is a run of
   consecutive slices, each shuffled and unpacked into the part's columns; then written.

The loops over examples are compiled (generator.kernels).

Uploads are decoupled from sampling: a finished part goes to `upload_concurrency` upload
threads (one connection to GCS moves 60-200 MB/s, so throughput comes from many in
flight), and at most `queued_parts` parts (2 x upload_concurrency: the ones uploading
plus as many waiting) are held in memory at once; a worker that would exceed that waits
for an upload to land. `start` returns once every part of the epoch is encoded (the
shared buffer is then free), so the next epoch's sampling overlaps this one's uploads;
its EpochUpload says when they all landed (the caller publishes ready.json only then).

Each example lands in a uniformly random slice and each slice is uniformly shuffled, so
the epoch is a uniformly random permutation (tests/test_generator_kernels.py checks it).
Every random draw comes from an SFC64 stream seeded by (seed, epoch, purpose) and the
chunk or slice: an epoch's bytes depend on nothing else (not on the number of worker
threads, nor on which epochs were made before it).
"""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from protocol import InvalidInput, PartInfo, RunDir, parts, storage
from protocol.parts import id_dtype

from . import kernels
from .config import DEFAULT_PART_EXAMPLES, DEFAULT_UPLOAD_CONCURRENCY
from .preprocess import Dataset

CHUNK_POSITIVES = 1 << 15  # about 1.3 MB of examples with 4 negatives: stays in a core's L2
SLICE_EXAMPLES = 1 << 17  # 1 MB

# What a random stream is for: SeedSequence([seed, epoch, purpose]), then one per chunk or slice.
NEGATIVES, SPLIT, SLICE = 0, 1, 2


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
        rng = np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, epoch, SPLIT])))
        sizes = rng.multinomial(layout.chunk_examples, np.full(layout.num_slices, 1 / layout.num_slices))
        bounds = np.concatenate([[0], np.cumsum(sizes.sum(axis=0))])
        starts = bounds[:-1] + np.cumsum(sizes, axis=0) - sizes
        return EpochSplit(starts, sizes, bounds)


class EpochUpload:
    """The uploads of one epoch's parts: result() waits for every one and returns the listing
    in part order (raising the first upload error)."""

    def __init__(self, futures: list[Future]):
        self._futures = futures

    def done(self) -> bool:
        return all(f.done() for f in self._futures)

    def result(self, timeout: float | None = None) -> list[PartInfo]:
        return [f.result(timeout) for f in self._futures]


class EpochWriter:
    """Writes epochs into a run directory, with `workers` threads (1: this thread alone)
    sampling and encoding, and `upload_concurrency` threads uploading.

    Threads, not processes: the compiled loops release the GIL, so the workers share the
    buffer and the dataset as plain arrays, and tasks are plain calls."""

    def __init__(self, dataset: Dataset, seed: int, num_neg: int, workers: int = 1,
                 part_examples: int = DEFAULT_PART_EXAMPLES, upload_concurrency: int = DEFAULT_UPLOAD_CONCURRENCY):
        _check_negatives_exist(dataset)
        self.dataset, self.seed, self.num_neg = dataset, seed, num_neg
        self.layout = EpochLayout.of(dataset, num_neg, part_examples)
        self._indptr = dataset.indptr
        _reuse_freed_memory()
        self._buffer = np.empty(self.layout.num_examples, np.uint64)
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="epoch") if workers > 1 else None
        self._uploads = ThreadPoolExecutor(upload_concurrency, thread_name_prefix="upload")
        self.queued_parts = 2 * upload_concurrency
        self._slots = threading.BoundedSemaphore(self.queued_parts)

    def __enter__(self) -> EpochWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None
        self._uploads.shutdown(wait=True, cancel_futures=True)

    def write(self, epoch: int, folder: str) -> list[PartInfo]:
        """Samples, shuffles and writes epoch `epoch` as parts under folder; returns their
        listing once every part has landed."""
        return self.start(epoch, folder).result()

    def start(self, epoch: int, folder: str) -> EpochUpload:
        """Samples and shuffles epoch `epoch` and queues its parts' uploads; returns when the
        buffer is free for the next epoch (uploads may still be in flight)."""
        layout = self.layout
        split = EpochSplit.draw(layout, self.seed, epoch)
        chunk_streams = kernels.streams(np.random.SeedSequence([self.seed, epoch, NEGATIVES]), layout.num_chunks)
        self._map(self._fill_chunk, [(c, chunk_streams[c], split.piece_starts[c], split.piece_sizes[c])
                                     for c in range(layout.num_chunks)])
        slice_streams = kernels.streams(np.random.SeedSequence([self.seed, epoch, SLICE]), layout.num_slices)
        per_part = layout.slices_per_part
        return EpochUpload(self._map(self._write_part, [
            (slice_streams[p * per_part:(p + 1) * per_part], split.slice_bounds[p * per_part:(p + 1) * per_part + 1],
             storage.join(folder, RunDir.part_name(p)))
            for p in range(layout.num_parts)
        ]))

    def _map(self, function, tasks: list[tuple]) -> list:
        if self._threads is None:
            return [function(*task) for task in tasks]
        return list(self._threads.map(function, *zip(*tasks)))

    def _fill_chunk(self, chunk: int, stream: np.ndarray, piece_starts: np.ndarray, piece_sizes: np.ndarray) -> None:
        """Stage 1: one chunk's positives and negatives, shuffled, cut into the slices' regions."""
        first, last = self.layout.chunk_users[chunk], self.layout.chunk_users[chunk + 1]
        begin, end = self._indptr[first], self._indptr[last]
        examples = np.empty(self.layout.chunk_examples[chunk], np.uint64)
        kernels.sample_shuffled(self._indptr[first:last + 1] - begin, self.dataset.train_items[begin:end], first,
                                self.dataset.num_items, self.num_neg, stream,
                                kernels.item_bitmap(self.dataset.num_items), examples)
        kernels.scatter(examples, piece_starts, piece_sizes, self._buffer)

    def _write_part(self, streams: np.ndarray, slice_bounds: np.ndarray, url: str) -> Future:
        """Stage 2: shuffle each of one part's slices, unpack them into the part's columns, queue
        its upload (waiting for a free slot first: memory stays bounded)."""
        self._slots.acquire()
        try:
            encoded = self._encode_part(streams, slice_bounds)
            future = self._uploads.submit(parts.write_encoded, url, encoded)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def _encode_part(self, streams: np.ndarray, slice_bounds: np.ndarray) -> parts.Encoded:
        encoded = parts.empty(slice_bounds[-1] - slice_bounds[0], {
            "user": id_dtype(self.dataset.num_users), "item": id_dtype(self.dataset.num_items), "label": np.uint8})
        shuffled = np.empty(np.diff(slice_bounds).max(), np.uint64)
        for stream, start, stop in zip(streams, slice_bounds[:-1], slice_bounds[1:]):
            kernels.shuffled_copy(stream, self._buffer[start:stop], shuffled[:stop - start])
            at = slice(start - slice_bounds[0], stop - slice_bounds[0])
            kernels.unpack(shuffled[:stop - start], *(encoded.columns[name][at] for name in ("user", "item", "label")))
        return encoded


def _check_negatives_exist(dataset: Dataset) -> None:
    full = np.flatnonzero(dataset.train_counts >= dataset.num_items)
    if len(full):
        raise InvalidInput(f"{dataset.name}: user {full[0]} has a training positive for every one of the "
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
