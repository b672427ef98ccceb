"""The generator Job, step by step (DESIGN.md "Flow" and "Restarts, failures, timeouts").

Wait for command.json, validate it, preprocess (or reuse the cache), publish
dataset/meta.json and the eval data, then write epochs a few ahead of the trainer. Every
step can be repeated after a kill -9: published files are kept (and checked), epochs
without a ready.json are deleted and regenerated with the same bytes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from protocol import AlreadyPublished, Command, DatasetMeta, InvalidInput, Ready, RunDir, storage
from protocol.cli import duration
from protocol.defaults import HEARTBEAT_INTERVAL_S, PEER_TIMEOUT_S, START_TIMEOUT_S
from protocol.messages import differences
from protocol.runfiles import epoch_folders, epoch_numbers
from protocol.peer import Heartbeat, PeerWatch

from . import evaldata
from .datasets import prepare
from .preprocess import Dataset
from .sampling import DEFAULT_PART_EXAMPLES, EpochWriter

log = logging.getLogger("ncf.generator")


@dataclass(frozen=True)
class Options:
    data_dir: str
    workers: int = 1
    start_timeout: float = START_TIMEOUT_S
    peer_timeout: float = PEER_TIMEOUT_S
    heartbeat_interval: float = HEARTBEAT_INTERVAL_S
    cache_dir: str | None = None
    part_examples: int = DEFAULT_PART_EXAMPLES


def default_cache_dir(data_dir: str) -> str:
    """A folder `ncf-cache` next to the run directory, shared by the runs beside it."""
    return storage.sibling(data_dir, "ncf-cache")


def run(options: Options) -> None:
    run_dir = RunDir(options.data_dir)
    storage.ensure_writable(run_dir.url)
    with Heartbeat(run_dir, "generator", options.heartbeat_interval) as beat:
        trainer = PeerWatch(run_dir, "trainer", options.start_timeout, options.peer_timeout)
        beat.update(state="waiting", message="waiting for command.json from the trainer")
        log.info("waiting for command.json from the trainer in %s", run_dir.url)
        storage.wait_for(run_dir.command, options.start_timeout, "command.json from the trainer", check=trainer.check)
        command = storage.read_message(run_dir.command, Command)
        log.info("run %s: %s, %d epochs, %d negatives per positive, eval %s with %d negatives, seed %d",
                 command.run_id, command.dataset.name, command.epochs, command.num_neg,
                 command.eval_mode, command.eval_negatives, command.seed)
        beat.update(run_id=command.run_id, state="preprocessing", message=f"preparing {command.dataset.name}")
        dataset = prepare(command.dataset, options.cache_dir or default_cache_dir(run_dir.url))
        meta = dataset.meta(command.run_id)
        command.check_against(meta, source=run_dir.command)
        evaldata.check_feasible(dataset, command, run_dir.command)
        publish_meta(run_dir, meta)
        write_eval(run_dir, dataset, command, beat)
        Epochs(run_dir, command, dataset, options, beat, trainer).produce()


def publish_meta(run_dir: RunDir, meta: DatasetMeta) -> None:
    """Publishes dataset/meta.json, or checks that an earlier attempt published the same."""
    try:
        storage.publish_once(run_dir.meta, meta)
    except AlreadyPublished:
        earlier = storage.read_message(run_dir.meta, DatasetMeta)
        fields = differences(meta.to_dict(), earlier.to_dict())
        if fields:
            raise InvalidInput(f"{run_dir.meta} was published by an earlier attempt with a different "
                               f"{', '.join(fields)}; this run directory belongs to another run") from None
        log.info("dataset/meta.json already published by an earlier attempt; it matches")


def write_eval(run_dir: RunDir, dataset: Dataset, command: Command, beat: Heartbeat) -> None:
    if is_published(RunDir.ready(run_dir.eval_dir), command.run_id):
        log.info("the eval data was already published by an earlier attempt")
        return
    beat.update(message="writing the eval data")
    started = time.monotonic()
    evaldata.write(run_dir, dataset, command)
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

    def __init__(self, run_dir: RunDir, command: Command, dataset: Dataset, options: Options,
                 beat: Heartbeat, trainer: PeerWatch):
        self.run_dir, self.command, self.dataset = run_dir, command, dataset
        self.options, self.beat, self.trainer = options, beat, trainer

    def produce(self) -> None:
        first = self.resume_point()
        total = self.command.epochs
        if first >= total:
            return self.finish(f"all {total} epochs were already made")
        log.info("starting at epoch %d of %d (%d workers)", first, total, self.options.workers)
        self.beat.update(epochs_done=first)
        started = time.monotonic()
        with EpochWriter(self.dataset, self.command.seed, self.command.num_neg, self.options.workers,
                         self.options.part_examples) as writer:
            for epoch in range(first, total):
                waited = self.wait_for_free_slot(epoch)
                if waited is None:
                    # Stopped early (--target-hr): nobody will read the epochs still ready.
                    storage.delete(self.run_dir.epochs_dir)
                    return self.finish("the trainer is done")
                examples, seconds = self.write(writer, epoch)
                eta = (time.monotonic() - started) / (epoch + 1 - first) * (total - epoch - 1)
                log.info("epoch %d (%d/%d): %s examples in %.1f s (%.1f M/s), waited %.1f s for a free "
                         "buffer slot; ETA %s", epoch, epoch + 1, total, f"{examples:,}", seconds, examples / seconds / 1e6,
                         waited, duration(eta))
        self.finish(f"all {total} epochs made")

    def resume_point(self) -> int:
        """The first epoch to make: after the last ready one, and after what the trainer consumed.

        Folders without a ready.json are leftovers of a killed attempt: deleted.
        """
        ready = []
        for epoch in epoch_numbers(self.run_dir):
            folder = self.run_dir.epoch_dir(epoch)
            if is_published(RunDir.ready(folder), self.command.run_id):
                ready.append(epoch)
            else:
                log.info("deleting %s: an unfinished epoch of an earlier attempt", folder)
                storage.delete(folder)
        status = self.trainer.check()
        consumed = status.epochs_done if status is not None and status.run_id == self.command.run_id else 0
        return max(max(ready, default=-1) + 1, consumed)

    def wait_for_free_slot(self, epoch: int) -> float | None:
        """Seconds waited until fewer than buffer_epochs epochs are ready; None if the trainer is done."""
        started = time.monotonic()
        polls = 0

        def free_or_done() -> str | None:
            nonlocal polls
            status = self.trainer.check()
            if status is not None and status.state == "done" and status.run_id == self.command.run_id:
                return "done"
            if self.ready_count() < self.command.buffer_epochs:
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
        return sum(epoch_folders(self.run_dir).values())

    def write(self, writer: EpochWriter, epoch: int) -> tuple[int, float]:
        """Writes one epoch's parts, then its ready.json; returns (examples, seconds)."""
        folder = self.run_dir.epoch_dir(epoch)
        self.beat.update(state="generating", epoch=epoch, message=f"writing epoch {epoch}")
        started = time.monotonic()
        listing = writer.write(epoch, folder)
        examples = sum(p.num_examples for p in listing)
        storage.publish_once(RunDir.ready(folder), Ready(run_id=self.command.run_id, kind="train", epoch=epoch,
                                                         num_examples=examples, parts=listing))
        seconds = time.monotonic() - started
        self.beat.update(epochs_done=epoch + 1, examples_per_s=examples / seconds,
                         message=f"epoch {epoch} ready")
        return examples, seconds

    def finish(self, why: str) -> None:
        log.info("done: %s", why)
        self.beat.update(state="done", epoch=None, message=why)
