"""Checkpoints in the bucket: weights + optimizer state + epochs done, off the training loop.

A checkpoint is taken in two steps. `Checkpointer.start` snapshots every weight and
optimizer slot to host memory (numpy arrays; the only time the loop is blocked) and hands
them to a background thread, which uploads them as checkpoints/ckpt-<epochs_done:06d>/
piece-NNNNN: the arrays laid end to end (`layout`) and cut into byte ranges of
PIECE_BYTES, `uploads` pieces in flight (one connection to GCS moves 60-200 MB/s, so one
object of an ml-20m checkpoint, ~381 MB, would take seconds). Only when every piece has
landed is checkpoints/latest.json overwritten (one atomic object write): the message
protocol.messages.CheckpointPointer lists the pieces (size, CRC32C), the arrays (dtype,
shape, byte offset) and what a restart needs besides them: the metrics of every epoch
trained so far (so metrics.jsonl can be rebuilt to exactly the checkpoint's epochs),
whether training finished, and the model settings. A kill at any moment leaves the
previous checkpoint or the new one, never a mix. Pieces are decoded in one place,
`read_arrays`, for the latest checkpoint and for an older one still kept (`kept_weights`).

At most one checkpoint is in flight: `wait` blocks until the previous one has landed and
returns the seconds it waited (metrics.jsonl's checkpoint_wait_s).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol import CorruptData, EpochMetrics, ForeignRun, InvalidInput, RunDir, parts, storage
from protocol.messages import ArrayLayout, CheckpointPiece, CheckpointPointer, describe_differences, differences

log = logging.getLogger("ncf.trainer")
KEEP = 2  # checkpoints kept in the bucket
PIECE_BYTES = 16 << 20  # an ml-20m MLPerf checkpoint (~381 MB) is 23 pieces
UPLOADS = 16  # pieces in flight (read in parallel on restore, too)


@dataclass
class State:
    run_id: str
    epochs_done: int
    finished: bool  # no more epochs to train (all done or the target HR was reached)
    started: float  # wall clock when the run first started training
    model_config: dict[str, Any]
    history: list[EpochMetrics] = field(default_factory=list)


@dataclass(frozen=True)
class Saved:
    """A complete checkpoint in the bucket: its folder and the pointer that describes its pieces."""

    pointer: CheckpointPointer
    url: str  # the checkpoint's folder
    # False for an older checkpoint read with latest.json's pointer (its own was overwritten):
    # same layout and piece sizes (same model), but the CRC32Cs are the latest's.
    own_checksums: bool = True

    @property
    def state(self) -> State:
        p = self.pointer
        return State(p.run_id, p.epochs_done, p.finished, p.started, p.model_config, list(p.history))


def pointer_url(run: RunDir) -> str:
    return storage.join(run.checkpoints, "latest.json")


def _optimizer(model):
    optimizer = model.optimizer
    return getattr(optimizer, "inner_optimizer", optimizer)  # the loss-scale wrapper's state is not kept


def snapshot(model) -> dict[str, np.ndarray]:
    """Every weight and optimizer slot as a host numpy array, in checkpoint order.

    On an accelerator this is the device-to-host copy. On a CPU a variable's numpy value may
    share the variable's buffer; TensorFlow copies a variable's buffer before updating it
    in place while a tensor read from it is alive (copy-on-write), so the snapshot keeps
    the values it was taken with (tests/test_throughput_units.py checks it)."""
    arrays = {f"w{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(model.weights)}
    arrays |= {f"o{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(_optimizer(model).variables)}
    return arrays


def layout(arrays: dict[str, np.ndarray]) -> list[ArrayLayout]:
    """The arrays laid end to end: key, dtype, shape, byte offset of each."""
    table, offset = [], 0
    for key, array in arrays.items():
        table.append(ArrayLayout(key=key, dtype=array.dtype.str, shape=list(array.shape), offset=offset,
                                 nbytes=array.nbytes))
        offset += array.nbytes
    return table


def _piece(arrays: dict[str, np.ndarray], table: list[ArrayLayout], start: int, stop: int) -> bytes:
    """Bytes start:stop of the arrays laid end to end."""
    chunks = []
    for entry in table:
        lo, hi = max(start, entry.offset), min(stop, entry.offset + entry.nbytes)
        if lo < hi:
            flat = memoryview(np.ascontiguousarray(arrays[entry.key])).cast("B")
            chunks.append(flat[lo - entry.offset:hi - entry.offset])
    return b"".join(chunks)


def folder_name(epochs_done: int) -> str:
    return f"ckpt-{epochs_done:06d}"


def upload(run: RunDir, arrays: dict[str, np.ndarray], state: State, pool: ThreadPoolExecutor,
           piece_bytes: int = PIECE_BYTES) -> CheckpointPointer:
    """Writes the pieces in parallel, then latest.json, then deletes older checkpoints.
    Returns the pointer."""
    table = layout(arrays)
    total = sum(entry.nbytes for entry in table)
    folder = storage.join(run.checkpoints, folder_name(state.epochs_done))
    ranges = [(start, min(start + piece_bytes, total)) for start in range(0, max(total, 1), piece_bytes)]

    def write(index: int) -> CheckpointPiece:
        data = _piece(arrays, table, *ranges[index])
        name = f"piece-{index:05d}"
        storage.write_bytes(storage.join(folder, name), data)
        return CheckpointPiece(name=name, size=len(data), crc32c=parts.checksum(data))

    pointer = CheckpointPointer(
        run_id=state.run_id, epochs_done=state.epochs_done, finished=state.finished, started=state.started,
        model_config=state.model_config, folder=folder_name(state.epochs_done), size=total, arrays=table,
        pieces=list(pool.map(write, range(len(ranges)))), history=list(state.history))
    storage.overwrite(pointer_url(run), pointer)
    oldest_kept = folder_name(state.epochs_done - KEEP + 1)
    for old in storage.listdir(run.checkpoints):
        if old.startswith("ckpt-") and old < oldest_kept:
            storage.delete(storage.join(run.checkpoints, old))
    return pointer


def save(run: RunDir, model, state: State) -> None:
    """A checkpoint written in the caller's thread (snapshot + upload), for scripts and tests."""
    with ThreadPoolExecutor(UPLOADS) as pool:
        upload(run, snapshot(model), state, pool)


class Checkpointer:
    """Checkpoints uploaded in the background, one at a time (see the module docstring).

    `on_landed(epochs_done)` runs in the upload thread once latest.json is published: the
    trainer deletes the epochs the checkpoint covers from there (through its writer)."""

    def __init__(self, run: RunDir, uploads: int = UPLOADS, piece_bytes: int = PIECE_BYTES,
                 on_landed: Callable[[int], None] | None = None):
        self.run, self.piece_bytes, self.on_landed = run, piece_bytes, on_landed
        self._pool = ThreadPoolExecutor(uploads, thread_name_prefix="ckpt-piece")
        self._runner = ThreadPoolExecutor(1, thread_name_prefix="ckpt")
        self._in_flight: Future | None = None
        self._lock = threading.Lock()
        self.last_upload_s = 0.0
        self.last_snapshot_s = 0.0
        # Set by the trainer: epochs done at the last checkpoint started, and when (monotonic).
        self.last_epochs_done, self.last_time = 0, time.monotonic()

    def in_flight(self) -> bool:
        return self._in_flight is not None and not self._in_flight.done()

    def wait(self) -> float:
        """Seconds waited for the checkpoint in flight to land; raises its error if it failed."""
        future, started = self._in_flight, time.monotonic()
        if future is None:
            return 0.0
        if not future.done():
            log.info("waiting for the previous checkpoint's upload to land")
        future.result()
        self._in_flight = None
        return time.monotonic() - started

    def start(self, model, state: State) -> float:
        """Snapshots the model to host memory and starts uploading it; returns the seconds the
        snapshot took. The previous checkpoint must have landed (call wait() first)."""
        if self.in_flight():
            raise RuntimeError("a checkpoint is still in flight: wait() for it first")
        started = time.monotonic()
        arrays = snapshot(model)
        self.last_snapshot_s = time.monotonic() - started
        state = State(state.run_id, state.epochs_done, state.finished, state.started, dict(state.model_config),
                      list(state.history))  # the loop keeps appending to its own history
        self._in_flight = self._runner.submit(self._upload, arrays, state)
        return self.last_snapshot_s

    def _upload(self, arrays: dict[str, np.ndarray], state: State) -> None:
        started = time.monotonic()
        pointer = upload(self.run, arrays, state, self._pool, self.piece_bytes)
        self.last_upload_s = time.monotonic() - started
        log.info("checkpoint after epoch %d landed: %.0f MB in %d pieces, %.1f s", state.epochs_done - 1,
                 pointer.size / 1e6, len(pointer.pieces), self.last_upload_s)
        if self.on_landed is not None:
            self.on_landed(state.epochs_done)

    def close(self, raise_errors: bool = True) -> None:
        """Waits for the checkpoint in flight (raising its error), then stops the threads."""
        try:
            self.wait()
        except BaseException:
            if raise_errors:
                raise
        finally:
            self._runner.shutdown(wait=True)
            self._pool.shutdown(wait=True)


def load_state(run: RunDir, run_id: str, model_config: dict[str, Any]) -> Saved | None:
    """The latest complete checkpoint, or None if there is none."""
    url = pointer_url(run)
    if not storage.exists(url):
        return None
    pointer = storage.read_message(url, CheckpointPointer)
    if pointer.run_id != run_id:
        raise ForeignRun(url, describe_differences({"run_id": run_id}, {"run_id": pointer.run_id}, ["run_id"],
                                                   "this run", "the checkpoint"))
    changed = differences(model_config, pointer.model_config)
    if changed:
        raise ForeignRun(url, describe_differences(model_config, pointer.model_config, changed, "the flags",
                                                   "the checkpoint"))
    return Saved(pointer, storage.join(run.checkpoints, pointer.folder))


def read_arrays(saved: Saved, uploads: int = UPLOADS) -> dict[str, np.ndarray]:
    """The checkpoint's arrays, its pieces read in parallel, each checked for size and (when
    the pointer is the checkpoint's own) CRC32C: the one place pieces are decoded."""
    pointer = saved.pointer
    buffer = np.empty(pointer.size, np.uint8)
    offsets = np.concatenate([[0], np.cumsum([p.size for p in pointer.pieces])])

    def read(index: int) -> None:
        info = pointer.pieces[index]
        url = storage.join(saved.url, info.name)
        data = storage.read_bytes(url)
        if len(data) != info.size or (saved.own_checksums and parts.checksum(data) != info.crc32c):
            raise CorruptData(f"{url}: size or CRC32C differs from checkpoints/latest.json (corrupted checkpoint)")
        buffer[offsets[index]:offsets[index + 1]] = np.frombuffer(data, np.uint8)

    with ThreadPoolExecutor(uploads, thread_name_prefix="ckpt-read") as pool:
        list(pool.map(read, range(len(pointer.pieces))))
    return {entry.key: buffer[entry.offset:entry.offset + entry.nbytes].view(entry.dtype).reshape(entry.shape)
            for entry in pointer.arrays}


def _weights(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [arrays[k] for k in sorted(arrays) if k.startswith("w")]


def kept_weights(run: RunDir, epochs_done: int, latest: Saved) -> list[np.ndarray] | None:
    """The model weights of the checkpoint after `epochs_done` epochs if it is still kept (the
    last KEEP are), else None. Its own pointer was overwritten, so it is read with the latest
    one's layout and piece sizes, its CRC32Cs unchecked (see Saved.own_checksums)."""
    older = Saved(latest.pointer, storage.join(run.checkpoints, folder_name(epochs_done)), own_checksums=False)
    try:
        if not storage.listdir(older.url):
            return None
        return [array.copy() for array in _weights(read_arrays(older))]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, CorruptData) as error:
        log.warning("ignoring the checkpoint %s: %s", older.url, error)
        return None


def restore(model, saved: Saved) -> None:
    """Loads weights and optimizer state into a compiled model (built optimizer)."""
    arrays = read_arrays(saved)
    slots = [arrays[k] for k in sorted(arrays) if k.startswith("o")]
    optimizer = _optimizer(model)
    optimizer.build(model.trainable_variables)
    if len(slots) != len(optimizer.variables) or any(
            tuple(a.shape) != tuple(v.shape) for a, v in zip(slots, optimizer.variables)):
        raise InvalidInput(f"{saved.url}: optimizer state does not fit this model")
    model.set_weights(_weights(arrays))
    for variable, value in zip(optimizer.variables, slots):
        variable.assign(value)
