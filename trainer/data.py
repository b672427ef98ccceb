"""The input pipeline: ready epochs in the bucket -> verified numpy columns -> tf.data blocks of batches.

Everything is read through protocol (sizes and CRC32C verified, foreign run_ids refused).
Epoch k + 1 is read by a background thread while epoch k trains; the seconds the training
loop waits for it are what metrics.jsonl reports as data_wait_s.

An epoch of several slices (DESIGN.md "Past one pod": each a shuffled range of users) is
interleaved as it is read (Interleave): every part lands straight at its examples' places,
so each batch draws from every slice in proportion to the slice's size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from protocol import CorruptData, InvalidInput, PeerError, Ready, RunDir, parts, storage

from .config import DEFAULT_READ_CONCURRENCY
from .hosts import share

log = logging.getLogger("ncf.trainer")


def read_ready(folder: str, run_id: str, kind: str, epoch: int | None) -> Ready:
    """Reads folder/ready.json and refuses data that is not this run's (exit code 2)."""
    url = RunDir.ready(folder)
    ready = storage.read_message(url, Ready, run_id)
    if ready.kind != kind or ready.epoch != epoch:
        raise InvalidInput(f"{url}: expected kind {kind!r} epoch {epoch}, found kind {ready.kind!r} epoch {ready.epoch}")
    return ready


class HostShare(NamedTuple):
    """Trainer host `index` of `count`: it takes its share (trainer/hosts.py) of every slice."""

    index: int
    count: int

    def ranges(self, slice_sizes: list[int]) -> list[tuple[int, int]]:
        """This host's examples [start, stop) of each slice."""
        return [share(n, self.index, self.count) for n in slice_sizes]

    def sizes(self, slice_sizes: list[int]) -> list[int]:
        """This host's number of examples of each slice."""
        return [stop - start for start, stop in self.ranges(slice_sizes)]


ONE_HOST = HostShare(0, 1)


def read_columns(folder: str, ready: Ready, names: tuple[str, ...], threads: int = DEFAULT_READ_CONCURRENCY,
                 batch_size: int | None = None, host: HostShare = ONE_HOST) -> dict[str, np.ndarray]:
    """Reads and verifies the listed parts this host needs, `threads` in flight, straight into the
    named columns (allocated once, from the sizes ready.json lists: no concatenation, and no more
    than `threads` parts' bytes held besides the columns), each part's examples at their places
    (`placement`). A part none of whose examples are this host's is not read."""
    if not ready.parts:
        raise CorruptData(f"{RunDir.ready(folder)} lists no parts")
    total, part_runs = placement(ready, batch_size, host)
    out: dict[str, np.ndarray] = {}
    allocate = threading.Lock()

    def one(index: int) -> None:
        runs = part_runs(index)
        if not runs:  # none of the part's examples are this host's: not read
            return
        info = ready.parts[index]
        url = storage.join(folder, info.name)
        columns = parts.read(url, info)
        missing = [n for n in names if n not in columns]
        if missing:
            raise CorruptData(f"{url}: lacks column(s) {', '.join(missing)} (has {', '.join(columns)})")
        with allocate:
            if not out:
                out.update({n: np.empty((total, *columns[n].shape[1:]), columns[n].dtype) for n in names})
        for name in names:
            source, target = columns[name], out[name]
            if source.dtype != target.dtype or source.shape[1:] != target.shape[1:]:
                raise CorruptData(f"{folder}: column {name!r} differs across parts ({source.dtype}{list(source.shape[1:])}"
                                  f" in {info.name}, {target.dtype}{list(target.shape[1:])} in another)")
            for run in runs:
                target[run.target:run.target + run.count] = source[run.source:run.source + run.count]

    with ThreadPoolExecutor(max(1, min(threads, len(ready.parts))), thread_name_prefix="read") as pool:
        list(pool.map(one, range(len(ready.parts))))
    return out


def placement(ready: Ready, batch_size: int | None, host: HostShare = ONE_HOST) -> tuple[int, Callable[[int], list[Run]]]:
    """This host's examples of the epoch, and where each listed part's go: (their number, part k ->
    its runs). The host takes a contiguous range of every slice (ready.json lists the slices'
    parts in slice order), so the hosts' shares differ by at most one example per slice. With a
    batch_size and several slices they are interleaved (Interleave); otherwise laid out in the
    order of the parts."""
    slice_sizes = ready.slice_sizes()
    ranges = host.ranges(slice_sizes)
    local = [high - low for low, high in ranges]
    interleave = Interleave.of(local, batch_size) if batch_size else None
    slice_starts, local_starts = np.cumsum([0, *slice_sizes]), np.cumsum([0, *local])
    part_starts = np.cumsum([0, *(info.num_examples for info in ready.parts)])
    part_slices = np.searchsorted(slice_starts, part_starts[:-1], side="right") - 1

    def runs(k: int) -> list[Run]:
        s = part_slices[k]
        first, stop = part_starts[k] - slice_starts[s], part_starts[k + 1] - slice_starts[s]  # within the slice
        (low, high) = ranges[s]
        begin, end = max(first, low), min(stop, high)  # this host's examples of the part
        if begin >= end:
            return []
        if interleave is None:
            return [Run(int(local_starts[s] + begin - low), int(begin - first), int(end - begin))]
        return [Run(run.target, int(run.source + begin - first), run.count)
                for run in interleave.runs(s, begin - low, end - low)]
    return int(local_starts[-1]), runs


class Interleave:
    """The order in which an epoch of S slices is trained: each batch of batch_size draws from
    every slice in proportion to its size, a stratified sample of the epoch (its slices are
    ranges of users, so slice after slice would train on one range of users at a time).

    The epoch is the merge of the slices by the key (i + 1/2) / n_s of example i of slice s (n_s
    its size; ties to the lower s): every prefix of it, and so every batch, holds as near
    t * n_s / n of slice s as whole examples allow (Webster's apportionment, which never takes
    one back as t grows). Kept per batch, not per example: taken[b, s] examples of slice s come
    before batch b, and within a batch each slice's run follows the previous slice's. A part
    is scattered straight to its places, so no epoch-sized permutation exists; with one slice
    every place is the part's own (the order of the parts).
    """

    def __init__(self, sizes: list[int], batch_size: int):
        self.sizes, self.batch_size = np.asarray(sizes, np.int64), batch_size
        self.taken = _apportion(self.sizes, batch_size)
        # Where slice s's run starts within batch b: after the runs of slices before it.
        within = np.diff(self.taken, axis=0)
        self.run_starts = np.cumsum(within, axis=1) - within

    @staticmethod
    def of(sizes: list[int], batch_size: int) -> Interleave | None:
        """None for one slice: then the epoch is trained in the order of its parts."""
        return Interleave(sizes, batch_size) if len(sizes) > 1 else None

    def runs(self, s: int, start: int, stop: int) -> list[Run]:
        """Where examples start..stop-1 of slice s go in the epoch: one run per batch they meet."""
        taken = self.taken[:, s]
        first, last = np.searchsorted(taken, [start, stop - 1], side="right") - 1
        batches = np.arange(first, last + 1)
        begins = np.maximum(taken[batches], start)
        counts = np.minimum(taken[batches + 1], stop) - begins
        targets = batches * self.batch_size + self.run_starts[batches, s] + begins - taken[batches]
        return [Run(int(to), int(begin - start), int(count))
                for to, begin, count in zip(targets, begins, counts) if count]


class Run(NamedTuple):
    """count examples of a part, from its example `source` on, go to the epoch's `target` on."""

    target: int
    source: int
    count: int


def _apportion(sizes: np.ndarray, batch_size: int) -> np.ndarray:
    """int64 [batches + 1, S]: row b is the merge's first min(b * batch_size, n) examples, counted
    per slice. Rounding t * n_s / n to the nearest takes every key up to t / n; the few seats
    that leaves over or under go to the next keys in line, or come off the last ones taken."""
    total = int(sizes.sum())
    ends = np.minimum(np.arange(0, total + batch_size, batch_size, dtype=np.int64), total)
    share = sizes / total
    taken = np.minimum(np.floor(ends[:, None] * share + 0.5).astype(np.int64), sizes)
    for _ in range(len(sizes) + 1):
        short = ends - taken.sum(axis=1)
        if not short.any():
            return taken
        next_key = np.where(taken < sizes, (taken + 0.5) / sizes, np.inf)
        last_key = np.where(taken > 0, (taken - 0.5) / sizes, -np.inf)
        rows = np.arange(len(ends))
        grow, shrink = short > 0, short < 0
        taken[rows[grow], np.argmin(next_key[grow], axis=1)] += 1
        # The last key taken: the largest, and among equal ones the higher slice (ties go low first).
        last = len(sizes) - 1 - np.argmax(last_key[shrink][:, ::-1], axis=1)
        taken[rows[shrink], last] -= 1
    raise AssertionError("apportionment did not converge")  # at most S seats are off per row


@dataclass
class Epoch:
    """This host's examples of an epoch, in training order."""

    epoch: int
    user: np.ndarray
    item: np.ndarray
    label: np.ndarray
    smallest_share: int  # the fewest examples any host has (all of them with one host)
    epoch_examples: int  # of every host

    @property
    def num_examples(self) -> int:
        return len(self.label)


def read_epoch(run: RunDir, epoch: int, run_id: str, threads: int = DEFAULT_READ_CONCURRENCY,
               batch_size: int | None = None, host: HostShare = ONE_HOST) -> Epoch:
    """This host's share of epoch `epoch`, its slices interleaved for batches of batch_size (None:
    the parts in the order listed, for readers that do not train)."""
    folder = run.epoch_dir(epoch)
    ready = read_ready(folder, run_id, "train", epoch)
    cols = read_columns(folder, ready, ("user", "item", "label"), threads, batch_size, host)
    for name in ("user", "item", "label"):
        if cols[name].ndim != 1:
            raise CorruptData(f"{folder}: column {name!r} should be one-dimensional, has shape {cols[name].shape}")
    smallest = min(sum(HostShare(h, host.count).sizes(ready.slice_sizes())) for h in range(host.count))
    return Epoch(epoch, cols["user"], cols["item"], cols["label"], smallest, ready.num_examples)


def blocks(user: np.ndarray, item: np.ndarray, label: np.ndarray, batch_size: int, steps: int,
           cast_ids: bool = False):
    """A tf.data.Dataset of blocks ((user, item), label) of `steps` consecutive batches, each
    column shaped [batch_size, steps]: column k of block j is batch j * steps + k, in the
    columns' order. tf.data costs tens of microseconds per element on a small host, so an
    element is a block, never one batch or example; the training loop trains a block's
    batches one after the other in one compiled call. Examples stay on axis 0, so a
    distribution strategy splits each batch across its replicas as it would split one batch.

    After the full blocks: the remaining full batches as one narrower block, then the last,
    partial batch as a block [rest, 1] (every example once per epoch). Ids stay uint16/uint32
    (the model casts them on the device) unless cast_ids (TPUs want int32)."""
    import tensorflow as tf

    id_dtype = np.int32 if cast_ids else None
    n = len(label)
    in_blocks = n // (batch_size * steps) * batch_size * steps
    in_batches = n // batch_size * batch_size
    dataset = None
    for start, stop, batch, width in ((0, in_blocks, batch_size, steps),
                                      (in_blocks, in_batches, batch_size, (in_batches - in_blocks) // batch_size),
                                      (in_batches, n, n - in_batches, 1)):
        if stop > start:
            # Examples start:stop -> [blocks, width, batch] -> [blocks, batch, width].
            u, i, y = (_tensor(c[start:stop].reshape(-1, width, batch).transpose(0, 2, 1), dtype)
                       for c, dtype in ((user, id_dtype), (item, id_dtype), (label, None)))
            part = tf.data.Dataset.from_tensor_slices(((u, i), y))
            dataset = part if dataset is None else dataset.concatenate(part)
    # tf.data's default graph rewrites find nothing to fuse here, yet applying them serializes the
    # pipeline, a copy of the whole epoch's tensors each time an iterator is made: a third of a
    # warm epoch's time, and in a fresh process its page faults (bench/input_pipeline.py).
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


# TensorFlow uses memory it did not allocate only if it is aligned for Eigen (64 bytes with AVX-512).
_TF_ALIGNMENT = 64


def _tensor(view: np.ndarray, dtype: np.dtype | None = None):
    """A tf.Tensor of view's values (as dtype), made with one copy into a buffer that TensorFlow
    takes over as it is (DLPack): from_tensor_slices on a numpy array copies it twice (numpy's
    copy of the strided view, then TensorFlow's into aligned memory), and on a fresh process's
    first epoch each copy also pays the page faults of its new memory (bench/input_pipeline.py)."""
    import tensorflow as tf

    dtype = np.dtype(dtype or view.dtype)
    raw = np.empty(view.size * dtype.itemsize + _TF_ALIGNMENT, np.uint8)
    skip = -raw.ctypes.data % _TF_ALIGNMENT
    out = raw[skip:skip + view.size * dtype.itemsize].view(dtype).reshape(view.shape)
    np.copyto(out, view, casting="unsafe")  # as astype would
    # The capsule holds `out` (and so `raw`) until TensorFlow frees the tensor.
    return tf.experimental.dlpack.from_dlpack(out.__dlpack__())


class Prefetcher:
    """Reads epochs in a background thread, one ahead of the training loop, each with
    `read_concurrency` part reads in flight. The trainer starts the first epoch's read
    before it builds the model and each next one as soon as it takes the current one, so
    the read of epoch k + 1 overlaps all of epoch k's training and evaluation.

    `wait_check` runs while an epoch's ready.json is missing (PeerWatch.check plus the
    spawned child's exit status); it may raise PeerError, which reaches the loop via get().
    """

    def __init__(self, run: RunDir, run_id: str, wait_check: Callable[[str], None], read_concurrency: int = DEFAULT_READ_CONCURRENCY,
                 batch_size: int | None = None, host: HostShare = ONE_HOST):
        self.run, self.run_id, self.wait_check = run, run_id, wait_check
        self.read_concurrency, self.batch_size, self.host = read_concurrency, batch_size, host
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self._futures: dict[int, Future] = {}
        self._closed = threading.Event()

    def start(self, epoch: int) -> None:
        if epoch not in self._futures:
            self._futures[epoch] = self._pool.submit(self._load, epoch)

    def ready(self, epoch: int) -> bool:
        return epoch in self._futures and self._futures[epoch].done()

    def get(self, epoch: int) -> tuple[Epoch, float]:
        """The epoch's data and the seconds this call waited for it."""
        self.start(epoch)
        started = time.monotonic()
        data = self._futures.pop(epoch).result()
        return data, time.monotonic() - started

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _check(self, url: str) -> None:
        if self._closed.is_set():
            raise PeerError("trainer stopping: prefetch cancelled")
        self.wait_check(url)

    def _load(self, epoch: int) -> Epoch:
        ready_url = RunDir.ready(self.run.epoch_dir(epoch))
        storage.wait_for(ready_url, float("inf"), f"epoch {epoch} from the generator",
                         check=lambda: self._check(ready_url))
        started = time.monotonic()
        data = read_epoch(self.run, epoch, self.run_id, self.read_concurrency, self.batch_size, self.host)
        log.info("read epoch %d: %d examples in %.2f s", epoch, data.num_examples, time.monotonic() - started)
        return data
