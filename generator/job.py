"""The generator Job, step by step (DESIGN.md "Flow" and "Restarts, failures, timeouts").

Wait for command.json, validate it, preprocess (or reuse the cache), publish
dataset/meta.json and the eval data, then write epochs a few ahead of the trainer. Every
step can be repeated after a kill -9: published files are kept (and checked), epochs
without a ready.json are deleted and regenerated with the same bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from protocol import AlreadyPublished, Command, DatasetMeta, InvalidInput, PartInfo, Ready, RunDir, parts, storage
from protocol.cli import duration
from protocol.messages import IdMaps, differences
from protocol.runfiles import epoch_folders, epoch_numbers
from protocol.peer import Heartbeat, PeerWatch

from . import evaldata
from .datasets import prepare
from .preprocess import Dataset
from .config import Options
from .sampling import EpochUpload, EpochWriter

log = logging.getLogger("ncf.generator")


def default_cache_dir(data_dir: str) -> str:
    """A folder `ncf-cache` next to the run directory, shared by the runs beside it."""
    return storage.sibling(data_dir, "ncf-cache")


def generate(options: Options) -> None:
    run = RunDir(options.data_dir)
    storage.ensure_writable(run.url)
    storage.set_poll_patience(options.peer_timeout)
    with Heartbeat(run, "generator", options.heartbeat_interval) as beat:
        trainer = PeerWatch(run, "trainer", options.start_timeout, options.peer_timeout)
        beat.update(state="waiting", message="waiting for command.json from the trainer")
        log.info("waiting for command.json from the trainer in %s", run.url)
        storage.wait_for(run.command, options.start_timeout, "command.json from the trainer", check=trainer.check)
        command = storage.read_message(run.command, Command)
        log.info("run %s: %s, %d epochs, %d negatives per positive, eval %s with %d negatives, seed %d",
                 command.run_id, command.dataset.name, command.epochs, command.num_neg,
                 command.eval_mode, command.eval_negatives, command.seed)
        beat.update(run_id=command.run_id, state="preprocessing", message=f"preparing {command.dataset.name}")
        dataset = prepare(command.dataset, options.cache_dir or default_cache_dir(run.url))
        meta = dataset.meta(command.run_id)
        command.check_against(meta, source=run.command)
        evaldata.check_feasible(dataset, command, run.command)
        publish_ids(run, dataset, command.run_id)  # before meta.json: whoever sees meta.json finds them
        publish_meta(run, meta)
        write_eval(run, dataset, command, beat)
        Epochs(run, command, dataset, options, beat, trainer).produce()


def publish_meta(run: RunDir, meta: DatasetMeta) -> None:
    """Publishes dataset/meta.json, or checks that an earlier attempt published the same."""
    try:
        storage.publish_once(run.meta, meta)
    except AlreadyPublished:
        earlier = storage.read_message(run.meta, DatasetMeta)
        fields = differences(meta.to_dict(), earlier.to_dict())
        if fields:
            raise InvalidInput(f"{run.meta} was published by an earlier attempt with a different "
                               f"{', '.join(fields)}; this run directory belongs to another run") from None
        log.info("dataset/meta.json already published by an earlier attempt; it matches")


def publish_ids(run: RunDir, dataset: Dataset, run_id: str) -> IdMaps:
    """Publishes dataset/ids/ (raw id maps, training items per user; protocol.messages.IdMaps)
    once, create-only; a later attempt checks that what is there lists the same bytes."""
    encoded = {"users": parts.encode({"raw_id": dataset.raw_user_ids.astype(np.int64),
                                      "train_count": dataset.train_counts.astype(np.int64)}),
               "items": parts.encode({"raw_id": dataset.raw_item_ids.astype(np.int64)}),
               "train": parts.encode({"train_item": dataset.train_items})}
    listing = IdMaps(run_id=run_id, num_users=dataset.num_users, num_items=dataset.num_items,
                     num_train=dataset.num_train,
                     **{name: PartInfo(name=name, num_examples=part.num_examples, size=len(part.data),
                                       crc32c=parts.checksum(part.data)) for name, part in encoded.items()})
    if not storage.exists(run.ids):  # else leave the listed parts alone: compare below
        for name, part in encoded.items():
            parts.write_encoded(storage.join(run.ids_dir, name), part)
        try:
            storage.publish_once(run.ids, listing)
            return listing
        except AlreadyPublished:
            pass
    earlier = storage.read_message(run.ids, IdMaps)
    fields = differences(listing.to_dict(), earlier.to_dict())
    if fields:
        raise InvalidInput(f"{run.ids} was published by an earlier attempt with a different "
                           f"{', '.join(fields)}; this run directory belongs to another run")
    log.info("dataset/ids/ already published by an earlier attempt; it matches")
    return earlier


def write_eval(run: RunDir, dataset: Dataset, command: Command, beat: Heartbeat) -> None:
    if is_published(RunDir.ready(run.eval_dir), command.run_id):
        log.info("the eval data was already published by an earlier attempt")
        return
    beat.update(message="writing the eval data")
    started = time.monotonic()
    evaldata.write(run, dataset, command)
    log.info("eval data: %s users x %d candidates (%s mode) in %.1f s", f"{dataset.num_users:,}",
             1 + command.eval_negatives, command.eval_mode, time.monotonic() - started)


def is_published(ready_url: str, run_id: str) -> bool:
    """Whether ready_url exists; it must then be of this run (never mix in another run's data)."""
    if not storage.exists(ready_url):
        return False
    storage.read_message(ready_url, Ready, run_id)
    return True


class Epochs:
    """Writes epochs 0..n-1, at most buffer_epochs ready and unconsumed at a time."""

    def __init__(self, run: RunDir, command: Command, dataset: Dataset, options: Options,
                 beat: Heartbeat, trainer: PeerWatch):
        self.run, self.command, self.dataset = run, command, dataset
        self.options, self.beat, self.trainer = options, beat, trainer

    def produce(self) -> None:
        """Epoch k + 1 is sampled while epoch k's parts upload; a one-thread publisher waits for
        each epoch's uploads and publishes its ready.json, in epoch order."""
        first = self.resume_point()
        total = self.command.epochs
        if first >= total:
            return self.finish(f"all {total} epochs were already made")
        log.info("starting at epoch %d of %d (%d workers, %d uploads in flight)", first, total, self.options.workers,
                 self.options.upload_concurrency)
        self.beat.update(epochs_done=first)
        self.started, self.first = time.monotonic(), first
        with EpochWriter(self.dataset, self.command.seed, self.command.num_neg, self.options.workers,
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
        """The first epoch to make: after the last ready one, and after what the trainer consumed.

        Folders without a ready.json are leftovers of a killed attempt: deleted.
        """
        ready = []
        for epoch in epoch_numbers(self.run):
            folder = self.run.epoch_dir(epoch)
            if is_published(RunDir.ready(folder), self.command.run_id):
                ready.append(epoch)
            else:
                log.info("deleting %s: an unfinished epoch of an earlier attempt", folder)
                storage.delete(folder)
        self.trainer.check()
        return max(max(ready, default=-1) + 1, self.consumed())

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
        """Ready epochs the trainer has not consumed. A consumed one still here was remade while
        a restarted trainer was catching up (it deletes what it consumed when it starts): it is
        deleted again, or it would hold a buffer slot that the trainer never frees."""
        consumed, count = self.consumed(), 0
        for epoch, ready in epoch_folders(self.run).items():
            if ready and epoch < consumed:
                log.info("deleting epochs/%06d: the trainer consumed it already", epoch)
                storage.delete(self.run.epoch_dir(epoch))
            count += ready and epoch >= consumed
        return count

    def write(self, writer: EpochWriter, epoch: int) -> EpochUpload:
        """Samples one epoch and queues its parts' uploads (see publish)."""
        self.beat.update(state="generating", epoch=epoch, message=f"writing epoch {epoch}")
        return writer.start(epoch, self.run.epoch_dir(epoch))

    def publish(self, epoch: int, upload: EpochUpload, began: float, waited: float) -> None:
        """Once every part of the epoch has landed: its ready.json, then the heartbeat."""
        listing = upload.result()
        examples = sum(p.num_examples for p in listing)
        storage.publish_once(RunDir.ready(self.run.epoch_dir(epoch)),
                             Ready(run_id=self.command.run_id, kind="train", epoch=epoch, num_examples=examples,
                                   parts=listing))
        seconds = time.monotonic() - began
        self.beat.update(epochs_done=epoch + 1, examples_per_s=examples / seconds, message=f"epoch {epoch} ready")
        total = self.command.epochs
        eta = (time.monotonic() - self.started) / (epoch + 1 - self.first) * (total - epoch - 1)
        log.info("epoch %d (%d/%d): %s examples in %.1f s (%.1f M/s), waited %.1f s for a free buffer slot; ETA %s",
                 epoch, epoch + 1, total, f"{examples:,}", seconds, examples / seconds / 1e6, waited, duration(eta))

    def finish(self, why: str) -> None:
        log.info("done: %s", why)
        self.beat.update(state="done", epoch=None, message=why)
