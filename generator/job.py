"""The generator Job, step by step (DESIGN.md "Flow" and "Restarts, failures, timeouts").

Wait for command.json, validate it, preprocess (or reuse the cache), publish
dataset/meta.json and the eval data, then write epochs a few ahead of the trainer. Every
step can be repeated after a kill -9: published files are kept (and checked), slices
without a manifest are made again with the same bytes (over what an earlier attempt left).

One of N pods (--shard of --shards, DESIGN.md "Past one pod") makes only its slices
(generator.slices) of the eval data and of every epoch, and keeps at most buffer_epochs of
its own ahead of the trainer; whichever pod completes an epoch publishes its ready.json.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from protocol import Command, DatasetMeta, InvalidInput, PartInfo, Ready, RunDir, parts, storage
from protocol.cli import duration
from protocol.messages import IdMaps
from protocol.runfiles import epoch_folders
from protocol.peer import Heartbeat, PeerWatch

from . import datasets, evaldata, slices
from .datasets import prepare
from .preprocess import Dataset, DatasetIndex
from .config import Options
from .sampling import EpochSlice, EpochUpload, EpochWriter
from .slices import Slicing

log = logging.getLogger("ncf.generator")


def default_cache_dir(data_dir: str) -> str:
    """A folder `ncf-cache` next to the run directory, shared by the runs beside it."""
    return storage.sibling(data_dir, "ncf-cache")


def generate(options: Options) -> None:
    if options.shard >= options.shards:
        raise InvalidInput(f"--shard {options.shard}: expected a pod index below --shards {options.shards}")
    run = RunDir(options.data_dir)
    storage.configure(poll=options.peer_timeout, permission=options.permission_wait)
    storage.ensure_writable(run.url)
    with Heartbeat(run, "generator", options.heartbeat_interval, options.shard, options.shards) as beat:
        trainer = PeerWatch(run, "trainer", options.start_timeout, options.peer_timeout)
        beat.update(state="waiting", message="waiting for command.json from the trainer")
        log.info("waiting for command.json from the trainer in %s", run.url)
        storage.wait_for(run.command, options.start_timeout, "command.json from the trainer", check=trainer.check)
        command = storage.read_message(run.command, Command)
        log.info("run %s: %s, %d epochs, %d negatives per positive, eval %s with %d negatives, seed %d",
                 command.run_id, command.dataset.name, command.epochs, command.num_neg,
                 command.eval_mode, command.eval_negatives, command.seed)
        beat.update(run_id=command.run_id, state="preprocessing", message=f"preparing {command.dataset.name}")
        slicing, pieces = load_slices(command, options, run)
        write_eval(run, command, slicing, pieces, beat)
        Epochs(run, command, pieces, options, beat, trainer).produce()


def load_slices(command: Command, options: Options, run: RunDir) -> tuple[Slicing, list[EpochSlice]]:
    """The epochs' slicing and this pod's slices of the dataset, after dataset/ids/ and dataset/meta.json are published.

    A set one pod holds is prepared whole (or taken from the cache) and cut in memory; a
    larger one (datasets.user_range_source) loads only the users of this pod's slices, and
    publishes the users' raw ids alone, from the index (publish_user_ids)."""
    spec, cache_dir = command.dataset, options.cache_dir or default_cache_dir(run.url)
    whole = None if datasets.user_range_source(spec) else prepare(spec, cache_dir)
    index = whole.index() if whole is not None else datasets.index(spec, cache_dir)
    meta = index.meta(command.run_id)
    command.check_against(meta, source=run.command)
    slicing = Slicing.cut(index.block_users, index.block_train, command.slices, run.command)
    mine = slices.owned(command.slices, options.shard, options.shards)
    if not mine:
        raise InvalidInput(f"--shards {options.shards}: expected at most the run's {command.slices} slices "
                           f"(slices in {run.command}); pod {options.shard} would have none to make")
    first_parts = slicing.first_parts(1 + command.num_neg, options.part_examples)
    pieces = []
    for s in mine:
        first, last = (int(u) for u in slicing.users[s:s + 2])
        users = whole.users(first, last) if whole is not None else datasets.load_users(spec, cache_dir, first, last)
        evaldata.check_feasible(users, command, run.command)
        pieces.append(EpochSlice(index=s, dataset=users, first_user=first, first_part=int(first_parts[s]),
                                 all_users=index.num_users))
    # Before meta.json: whoever sees meta.json finds them.
    if whole is not None:
        publish_ids(run, whole, command.run_id)
    else:
        publish_user_ids(run, index, command.run_id)
    publish_meta(run, meta)
    return slicing, pieces


def publish_meta(run: RunDir, meta: DatasetMeta) -> None:
    """Publishes dataset/meta.json, or checks that an earlier attempt published the same."""
    storage.publish_or_match(run.meta, meta, "this attempt")


def publish_ids(run: RunDir, dataset: Dataset, run_id: str) -> IdMaps:
    """Publishes dataset/ids/ (raw id maps, training items per user; protocol.messages.IdMaps)
    once, create-only; a later attempt checks that what is there lists the same bytes."""
    return _publish_id_parts(run, dataset.index().meta(run_id), {
        "users": {"raw_id": dataset.raw_user_ids.astype(np.int64), "train_count": dataset.train_counts.astype(np.int64)},
        "items": {"raw_id": dataset.raw_item_ids.astype(np.int64)},
        "train": {"train_item": dataset.train_items}})


def publish_user_ids(run: RunDir, index: DatasetIndex, run_id: str) -> IdMaps:
    """dataset/ids/ of a set too large for one pod: its users' raw ids alone, which every pod
    knows from the index (items are already dense; no training items: IdMaps says why)."""
    return _publish_id_parts(run, index.meta(run_id), {"users": {"raw_id": index.raw_user_ids.astype(np.int64)}})


def _publish_id_parts(run: RunDir, meta: DatasetMeta, columns: dict[str, dict[str, np.ndarray]]) -> IdMaps:
    encoded = {name: parts.encode(part_columns) for name, part_columns in columns.items()}
    listing = IdMaps(run_id=meta.run_id, num_users=meta.num_users, num_items=meta.num_items,
                     num_train=meta.num_train,
                     **{name: PartInfo(name=name, num_examples=part.num_examples, size=len(part.data),
                                       crc32c=parts.checksum(part.data)) for name, part in encoded.items()})
    if not storage.exists(run.ids):  # else leave the listed parts alone: only compare
        for name, part in encoded.items():
            parts.write_encoded(storage.join(run.ids_dir, name), part)
    return storage.publish_or_match(run.ids, listing, "this attempt")


def write_eval(run: RunDir, command: Command, slicing: Slicing, pieces: list[EpochSlice], beat: Heartbeat) -> None:
    """This pod's slices of the eval data, each with its manifest; dataset/eval/ready.json once
    every slice's is there (by whichever pod sees that)."""
    folder = run.eval_dir
    if is_published(RunDir.ready(folder), command.run_id):
        log.info("the eval data was already published by an earlier attempt")
        return
    beat.update(message="writing the eval data")
    started = time.monotonic()
    first_parts = np.cumsum([0, *evaldata.parts_per_slice(slicing.users, command)])
    todo = [piece for piece in pieces if not slices.made(folder, [piece.index])]
    published = False
    for piece in todo:
        listing = evaldata.write_slice(run, piece.dataset, piece.first_user, int(first_parts[piece.index]), command)
        published = slices.publish(folder, Ready(run_id=command.run_id, kind="eval", epoch=None,
                                                 num_examples=piece.dataset.num_users, parts=listing,
                                                 slice=piece.index), command.slices)
    if not published:  # a pod killed between its last manifest and ready.json leaves it to whoever comes next
        slices.complete(folder, command.run_id, "eval", None, command.slices)
    users = sum(piece.dataset.num_users for piece in todo)
    log.info("eval data: %s users x %d candidates (%s mode) in %.1f s", f"{users:,}",
             1 + command.eval_negatives, command.eval_mode, time.monotonic() - started)


def is_published(ready_url: str, run_id: str) -> bool:
    """Whether ready_url exists; it must then be of this run (never mix in another run's data)."""
    if not storage.exists(ready_url):
        return False
    storage.read_message(ready_url, Ready, run_id)
    return True


class Epochs:
    """Writes this pod's slices of epochs 0..n-1, at most buffer_epochs of them made and
    unconsumed at a time."""

    def __init__(self, run: RunDir, command: Command, pieces: list[EpochSlice], options: Options,
                 beat: Heartbeat, trainer: PeerWatch):
        self.run, self.command, self.pieces = run, command, pieces
        self.mine = [piece.index for piece in pieces]
        self.options, self.beat, self.trainer = options, beat, trainer

    def produce(self) -> None:
        """Epoch k + 1 is sampled while epoch k's parts upload; a one-thread publisher waits for
        each slice's uploads and publishes its manifest (and the epoch's ready.json when that
        completes the epoch), in epoch order."""
        first = self.resume_point()
        total = self.command.epochs
        if first >= total:
            return self.finish(f"all {total} epochs were already made")
        log.info("starting at epoch %d of %d (%d workers, %d uploads in flight)", first, total, self.options.workers,
                 self.options.upload_concurrency)
        self.beat.update(epochs_done=first)
        self.started, self.first = time.monotonic(), first
        with EpochWriter(self.pieces, self.command.seed, self.command.num_neg, self.options.workers,
                         self.options.part_examples, self.options.upload_concurrency) as writer, \
                ThreadPoolExecutor(1, thread_name_prefix="publish") as publisher:
            publishing: list[Future] = []
            for epoch in range(first, total):
                publishing = [f for f in publishing if not (f.done() and f.result() is None)]  # raises its error
                waited = self.wait_for_free_slot(epoch, unpublished=lambda: sum(not f.done() for f in publishing))
                if waited is None:
                    # Stopped early (--target-hr): nobody will read the epochs still ready.
                    for f in publishing:
                        f.result()
                    storage.delete(self.run.epochs_dir)
                    return self.finish("the trainer is done")
                if epoch < self.consumed():
                    continue  # a restarted trainer is past it: nobody will read it
                began = time.monotonic()
                upload = self.write(writer, epoch)
                publishing.append(publisher.submit(self.publish, epoch, upload, began, waited))
            for f in publishing:
                f.result()
        self.finish(f"all {total} epochs made")

    def resume_point(self) -> int:
        """The first epoch to make: the first, after what the trainer consumed, that is neither
        ready nor has this pod's slices made. Parts an earlier attempt left without a manifest
        are written over. An epoch whose slices are all made but which has no ready.json (a pod
        was killed in between) is completed here."""
        self.trainer.check()
        epoch = self.consumed()
        while epoch < self.command.epochs and self.made(epoch):
            slices.complete(self.run.epoch_dir(epoch), self.command.run_id, "train", epoch, self.command.slices)
            epoch += 1
        return epoch

    def made(self, epoch: int) -> bool:
        """Whether epoch is ready, or at least this pod's slices of it are made."""
        folder = self.run.epoch_dir(epoch)
        return is_published(RunDir.ready(folder), self.command.run_id) or slices.made(folder, self.mine)

    def consumed(self) -> int:
        """Epochs the trainer has consumed (trained and covered by a landed checkpoint), by the
        last heartbeat read: even an earlier attempt's 'failed' one, which check() treats as
        not started yet. Those epochs are never needed again."""
        status = self.trainer.last
        return status.epochs_done if status is not None and status.run_id == self.command.run_id else 0

    def wait_for_free_slot(self, epoch: int, unpublished: Callable[[], int] = lambda: 0) -> float | None:
        """Seconds waited until fewer than buffer_epochs epochs are ready (counting the
        unpublished() ones still uploading); None if the trainer is done."""
        started = time.monotonic()
        polls = 0

        def free_or_done() -> str | None:
            nonlocal polls
            status = self.trainer.check()
            if status is not None and status.state == "done" and status.run_id == self.command.run_id:
                return "done"
            if unpublished() + self.ready_count() < self.command.buffer_epochs:
                return "free"
            polls += 1
            if polls == 1:
                self.beat.update(state="waiting", epoch=epoch, message=f"{self.command.buffer_epochs} epochs "
                                                                       "ready: waiting for the trainer to consume one")
            return None

        # No deadline of its own: the trainer's heartbeat (PeerWatch) bounds this wait.
        outcome = storage.wait_until(free_or_done, float("inf"), "a free buffer slot", max_interval=1.0)
        return None if outcome == "done" else time.monotonic() - started

    def ready_count(self) -> int:
        """Epochs the trainer has not consumed that are ready or have this pod's slices made (so
        each pod keeps at most buffer_epochs of its own ahead). A consumed epoch still here was
        remade while a restarted trainer was catching up (it deletes what it consumed when it
        starts): it is deleted again, or it would hold a buffer slot that is never freed."""
        consumed, count = self.consumed(), 0
        for epoch, ready in epoch_folders(self.run).items():
            if ready and epoch < consumed:
                log.info("deleting epochs/%06d: the trainer consumed it already", epoch)
                storage.delete(self.run.epoch_dir(epoch))
            count += epoch >= consumed and (ready or slices.made(self.run.epoch_dir(epoch), self.mine))
        return count

    def write(self, writer: EpochWriter, epoch: int) -> dict[int, EpochUpload]:
        """Samples this pod's slices of one epoch (those not made by an earlier attempt) and queues
        their parts' uploads (see publish)."""
        self.beat.update(state="generating", epoch=epoch, message=f"writing epoch {epoch}")
        folder = self.run.epoch_dir(epoch)
        return {s: writer.start(epoch, folder, s) for s in self.mine if not slices.made(folder, [s])}

    def publish(self, epoch: int, uploads: dict[int, EpochUpload], began: float, waited: float) -> None:
        """As each slice's parts have all landed: its manifest (and the epoch's ready.json if that
        was the last slice); then the heartbeat."""
        folder, examples = self.run.epoch_dir(epoch), 0
        for s, upload in uploads.items():
            listing = upload.result()
            made = Ready(run_id=self.command.run_id, kind="train", epoch=epoch,
                         num_examples=sum(p.num_examples for p in listing), parts=listing, slice=s)
            slices.publish(folder, made, self.command.slices)
            examples += made.num_examples
        seconds = time.monotonic() - began
        what = "ready" if self.mine == list(range(self.command.slices)) else f"slices {self.mine} made"
        self.beat.update(epochs_done=epoch + 1, examples_per_s=examples / seconds, message=f"epoch {epoch} {what}")
        total = self.command.epochs
        eta = (time.monotonic() - self.started) / (epoch + 1 - self.first) * (total - epoch - 1)
        log.info("epoch %d (%d/%d): %s examples in %.1f s (%.1f M/s), waited %.1f s for a free buffer slot; ETA %s",
                 epoch, epoch + 1, total, f"{examples:,}", seconds, examples / seconds / 1e6, waited, duration(eta))

    def finish(self, why: str) -> None:
        log.info("done: %s", why)
        self.beat.update(state="done", epoch=None, message=why)
