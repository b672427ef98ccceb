"""The trainer Job, top to bottom: command -> data -> NeuMF -> train/evaluate/checkpoint per epoch.

    ncf-trainer --data-dir DIR --dataset NAME [--epochs N] [--spawn-generator] ...

Order of work per epoch (DESIGN.md "Flow" and "Restarts"): wait for epochs/<k>/ready.json
(the next epoch is read in the background while this one trains), train, evaluate
HR@10 / NDCG@10, then metrics.jsonl, TensorBoard and status/trainer.json (queued on one
background writer, in this order), then the checkpoint (snapshot to host memory here,
uploaded in the background), and only once a checkpoint covering epoch k has landed is
epochs/<k>/ deleted (freeing a buffer slot for the generator; queued on the same writer).
Nothing in the loop waits for a bucket write, except a checkpoint that finds the previous
one still uploading (metrics.jsonl's checkpoint_wait_s). A restart resumes from the
checkpoint: it never trains an epoch twice into the result and never skips one.
Configuration: trainer/config.py; the model and its compiled epoch: trainer/model.py.

The exported model (trainer/export.py) is the best epoch's (highest HR@10, the first on a
tie) with `--export best` (the default), the last one's with `--export last`. The best
weights are copied to host memory whenever HR@10 improves, so the bucket is never read
back for them. A restarted trainer knows its best epoch so far from the checkpoint's
history and takes its weights from the restored checkpoint, or from that epoch's own
checkpoint while it is still kept (the last KEEP = 2, trainer/checkpoint.py; kept by trainer/best.py); otherwise
the best is chosen among the epochs trained after the restart, and if none is trained the
last epoch is exported, which the log and result.json (`exported_reason`) say.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import google_crc32c
import numpy as np

from protocol import (AlreadyPublished, Command, DatasetMeta, EpochMetrics, InvalidInput, PeerError, Result, RunDir,
                      storage)
from protocol.background import BackgroundWriter
from protocol.cli import duration
from protocol.peer import Heartbeat
from protocol.runfiles import epoch_numbers, write_metrics
from protocol.shards import GeneratorWatch

from . import checkpoint, data, evaluation, export, multihost, serving, strategy, tensorboard
from .best import BestWeights
from .child import check_alive, spawn_generator, stop_child
from .config import Config, parse_args

log = logging.getLogger("ncf.trainer")


def main(argv: list[str]) -> None:
    config = parse_args(argv)
    # Before anything touches the bucket: an accelerator asked for and missing is exit 2 at
    # once, and with several hosts every one has joined (trainer/multihost.py).
    if config.hosts > 1:
        multihost.start(config)
        hardware = None
    else:
        hardware = strategy.detect(config.accelerator)
        strategy.require(config.accelerator, hardware)
    run = RunDir(config.data_dir)
    # Polls treat bucket errors as no news for --peer-timeout; a 403 on the first writes is
    # waited out for --permission-wait.
    storage.configure(poll=config.peer_timeout, permission=config.permission_wait)
    if not writes_run(config):
        command = follow(run, config)
        train(config, run, command, Silent(), None, hardware)
        return
    storage.ensure_writable(run.url)
    command = publish_or_resume(run, config)
    child = spawn_generator(config) if config.spawn_generator else None
    try:
        with Heartbeat(run, "trainer", interval=config.heartbeat_interval) as heartbeat:
            heartbeat.update(run_id=command.run_id)
            train(config, run, command, heartbeat, child, hardware)
    finally:
        stop_child(child)


def writes_run(config: Config) -> bool:
    """Host 0 alone writes to the run directory (command.json, status, metrics, checkpoints,
    the export, result.json); the other hosts train and read."""
    return config.host_index == 0


class Silent:
    """The heartbeat of a host that writes no status (every host but 0)."""

    def update(self, **_) -> None:
        pass


# ----------------------------------------------------------------------------- command.json
def new_run_id(dataset: str) -> str:
    return f"{dataset}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def publish_or_resume(run: RunDir, config: Config) -> Command:
    """Publishes command.json with a new run_id, or resumes the run already there if its
    settings equal ours; if they differ, exit code 2 and the file is left untouched."""
    wanted = config.command(new_run_id(config.dataset))
    command = storage.publish_or_match(run.command, wanted, "the flags", ignore=("run_id",))
    if command.run_id == wanted.run_id:
        log.info("published %s: run %s", run.command, command.run_id)
    else:
        log.info("resuming run %s (command.json matches the flags)", command.run_id)
    return command


def follow(run: RunDir, config: Config) -> Command:
    """Host 1, 2, ...: the command.json host 0 publishes, which must match these flags."""
    storage.wait_for(run.command, config.start_timeout, "command.json from trainer host 0")
    command = storage.matching(run.command, config.command(new_run_id(config.dataset)), "the flags",
                               ignore=("run_id",))
    log.info("trainer host %d follows run %s", config.host_index, command.run_id)
    return command


# ----------------------------------------------------------------------------- the run
@dataclass
class Progress:
    """Where training stands: restored from the checkpoint on a restart."""

    epochs_done: int = 0
    finished: bool = False  # no more epochs to train (all done, or --target-hr reached)
    started: float = field(default_factory=time.time)  # wall clock when the run first trained
    history: list[EpochMetrics] = field(default_factory=list)


class Waits:
    """Waiting for the generator's files, while checking that the generator is still alive."""

    def __init__(self, run: RunDir, command: Command, config: Config, heartbeat: Heartbeat, child):
        self.run_id, self.heartbeat, self.child = command.run_id, heartbeat, child
        self.peer = GeneratorWatch(run, config.start_timeout, config.peer_timeout)

    def check(self, url: str) -> None:
        # Every generator pod must be alive (GeneratorWatch) and, if it is our child, still
        # running; a generator whose pods are all done will never write url.
        check_alive(self.child)
        self.peer.check()
        if self.peer.all_done(self.run_id) and not storage.exists(url):
            raise PeerError(f"the generator reports done, but {url} does not exist")

    def wait_for(self, url: str, what: str) -> None:
        if not storage.exists(url):
            self.heartbeat.update(state="waiting", message=f"waiting for {what}")
            storage.wait_for(url, float("inf"), what, check=lambda: self.check(url))


@dataclass(frozen=True)
class Network:
    """NeuMF built under the hardware's strategy (or on every host), with its compiled epoch and evaluation."""

    model: Any
    train_epoch: Callable[[data.Epoch], tuple[float, int]]  # -> mean loss, examples trained (all hosts)
    evaluate: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, float]]  # eval data -> HR@10, NDCG@10


@dataclass
class EpochLoop:
    """What the epoch loop works with, gathered once by train(): the run and its settings,
    where training stands, and the collaborators that outlive an epoch."""

    config: Config
    run: RunDir
    command: Command
    heartbeat: Heartbeat
    progress: Progress
    loader: data.Prefetcher
    writes: BackgroundWriter | None  # None on a host that does not write (writes_run)
    checkpoints: checkpoint.Checkpointer | None
    net: Network
    best: BestWeights


def train(config: Config, run: RunDir, command: Command, heartbeat: Heartbeat, child,
          hardware: strategy.Hardware) -> None:
    if storage.exists(run.result):
        log.info("%s exists: run %s is complete", run.result, command.run_id)
        heartbeat.update(state="done", message="complete")
        return
    saved = checkpoint.load_state(run, command.run_id, config.model_config())
    progress = resume(run, saved, tidy=writes_run(config))
    heartbeat.update(epochs_done=progress.epochs_done)
    waits = Waits(run, command, config, heartbeat, child)
    host = data.HostShare(config.host_index, config.hosts)
    loader = data.Prefetcher(run, command.run_id, waits.check, config.read_concurrency,
                             config.batch_size // config.hosts, host)
    try:
        if not progress.finished and progress.epochs_done < command.epochs:
            loader.start(progress.epochs_done)  # read while the eval data loads and the model builds
        meta, eval_data = load_dataset(run, command, waits, host)
        net = build_model(config, command, meta, saved, hardware)
        best = BestWeights(config.export)
        best.restore(run, saved, net.model)
        if not writes_run(config):
            train_epochs(EpochLoop(config, run, command, heartbeat, progress, loader, None, None, net, best), eval_data)
            exported(config, net.model, best, progress)
            return
        with BackgroundWriter("trainer-writes") as writes:
            checkpoints = checkpoint.Checkpointer(run, on_landed=consumed(run, writes, heartbeat, progress.epochs_done))
            checkpoints.last_epochs_done, checkpoints.last_time = progress.epochs_done, time.monotonic()
            loop = EpochLoop(config, run, command, heartbeat, progress, loader, writes, checkpoints, net, best)
            try:
                train_epochs(loop, eval_data)
                checkpoints.close()  # the last checkpoint has landed (or its error is raised here)
            finally:
                checkpoints.close(raise_errors=False)
    finally:
        loader.close()
    finish(loop, meta, exported(config, net.model, best, progress))


def exported(config: Config, model, best: BestWeights, progress: Progress) -> tuple:
    """Puts the weights to export in the model, on every host (with several, setting weights is a
    collective), and returns BestWeights.choose's answer. With several hosts each logs a checksum
    of them: equal everywhere (synchronous data parallelism keeps the replicas bit-identical)."""
    choice = best.choose(model, progress.history)
    if config.hosts > 1:
        weights = b"".join(np.ascontiguousarray(w).tobytes() for w in model.get_weights())
        log.info("trainer host %d of %d: weights CRC32C %08x", config.host_index, config.hosts,
                 google_crc32c.value(weights))
    return choice


def train_epochs(loop: EpochLoop, eval_data: tuple[np.ndarray, ...]) -> None:
    """From where the progress stands to the last epoch (or the target HR@10)."""
    config, command, progress, net = loop.config, loop.command, loop.progress, loop.net
    loop_started, first_epoch = time.monotonic(), progress.epochs_done
    for epoch in range(progress.epochs_done, command.epochs):
        if progress.finished:
            break
        examples, waited = data_for(loop, epoch)
        report(loop, state="training", epoch=epoch, message=None)
        began = time.monotonic()
        loss, trained = net.train_epoch(examples)
        train_s, began = time.monotonic() - began, time.monotonic()
        hr, ndcg = net.evaluate(*eval_data)
        record = EpochMetrics(epoch=epoch, hr_at_10=hr, ndcg_at_10=ndcg, loss=loss,
                              examples_per_s=trained / train_s, data_wait_s=waited,
                              train_s=train_s, eval_s=time.monotonic() - began, time=time.time(),
                              dropped_examples=examples.epoch_examples - trained)
        eta = (time.monotonic() - loop_started) / (epoch + 1 - first_epoch) * (command.epochs - epoch - 1)
        log_epoch(record, command.epochs, trained, eta)
        end_epoch(loop, record)
        loop.best.note(record, net.model)
        del examples


def resume(run: RunDir, saved: checkpoint.Saved | None, tidy: bool = True) -> Progress:
    """The progress a checkpoint records; tidies what a kill between checkpoint and delete left
    (unless the host does not write)."""
    if saved is None:
        return Progress()
    state = saved.state
    log.info("resuming from the checkpoint after epoch %d", state.epochs_done - 1)
    if tidy:
        for epoch in epoch_numbers(run):
            if epoch < state.epochs_done:
                log.info("deleting epochs/%06d (consumed before the restart)", epoch)
                storage.delete(run.epoch_dir(epoch))
        write_metrics(run.metrics, state.history)
    return Progress(state.epochs_done, state.finished, state.started, list(state.history))


def load_dataset(run: RunDir, command: Command, waits: Waits,
                 host: data.HostShare) -> tuple[DatasetMeta, tuple[np.ndarray, ...]]:
    """meta.json and this host's share of the eval data (users, candidate items, mask) from the generator."""
    waits.wait_for(run.meta, "dataset/meta.json from the generator")
    meta = storage.read_message(run.meta, DatasetMeta, command.run_id)
    command.check_against(meta, run.meta)
    log.info("dataset %s: %d users, %d items, %d training positives", meta.dataset, meta.num_users,
             meta.num_items, meta.num_train)
    waits.wait_for(run.ready(run.eval_dir), "the eval data (dataset/eval/ready.json) from the generator")
    ready = data.read_ready(run.eval_dir, command.run_id, "eval", None)
    columns = data.read_columns(run.eval_dir, ready, ("user", "items", "mask"), host=host)
    items, mask = columns["items"], columns["mask"]
    if items.ndim != 2 or items.shape[1] != 1 + command.eval_negatives or mask.shape != items.shape:
        raise InvalidInput(f"{run.eval_dir}: items/mask of shape {items.shape}/{mask.shape}, "
                           f"expected [users, {1 + command.eval_negatives}]")
    log.info("eval data: %d users x %d candidates%s", *items.shape,
             f" (host {host.index}'s share of {ready.num_examples})" if host.count > 1 else "")
    return meta, (columns["user"], items, mask)


def build_model(config: Config, command: Command, meta: DatasetMeta, saved: checkpoint.Saved | None,
                hardware: strategy.Hardware | None) -> Network:
    """NeuMF under the hardware's strategy, or on every host (multihost), restored from the
    checkpoint if there is one."""
    if config.hosts > 1:
        model, train_epoch, evaluate = multihost.build(config, command.seed, meta.num_users, meta.num_items, saved)
    else:
        model, train_epoch, evaluate = build_one_host(config, command.seed, meta, saved, hardware)
    log.info("NeuMF: mf_dim %d, layers %s, %d parameters; batch %d%s, lr %g", config.mf_dim, config.layers,
             model.count_params(), config.batch_size,
             f" ({config.batch_size // config.hosts} per host)" if config.hosts > 1 else "", config.learning_rate)
    return Network(model, train_epoch, evaluate)


def build_one_host(config: Config, seed: int, meta: DatasetMeta, saved: checkpoint.Saved | None,
                   hardware: strategy.Hardware):
    """One host, TensorFlow: (model, train_epoch, evaluate) as Network takes them."""
    import keras
    import tensorflow as tf

    from .model import build_neumf, compile_neumf, epoch_trainer

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    choice, distribution = strategy.setup(config.mixed_precision, hardware)
    with distribution.scope():
        model = compile_neumf(build_neumf(meta.num_users, meta.num_items, config.mf_dim, config.layers, config.l2),
                              config.learning_rate, config.xla, config.adam(), config.warmup_steps)
        if saved is not None:
            checkpoint.restore(model, saved)
    score_fn = tf.function(lambda u, i: model((u, i), training=False), jit_compile=config.xla, reduce_retracing=True)
    train_blocks = epoch_trainer(model, distribution, config.xla)

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if choice.kind in ("tpu", "multi_gpu"):
            return model.predict_on_batch((users.astype(np.int32), items.astype(np.int32)))
        return score_fn(tf.constant(users.astype(np.int32)), tf.constant(items.astype(np.int32))).numpy()

    def train_epoch(examples: data.Epoch) -> tuple[float, int]:
        blocks = data.blocks(examples.user, examples.item, examples.label, config.batch_size,
                             config.steps_per_execution, cast_ids=choice.kind == "tpu")
        return train_blocks(blocks), examples.num_examples

    def evaluate(users: np.ndarray, items: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
        return evaluation.evaluate(score, users, items, mask, config.eval_batch_size)

    return model, train_epoch, evaluate


def data_for(loop: EpochLoop, epoch: int) -> tuple[data.Epoch, float]:
    """Epoch `epoch`'s examples and the seconds waited for them; starts reading the next one."""
    if not loop.loader.ready(epoch):
        report(loop, state="waiting", epoch=epoch, message=f"waiting for epoch {epoch}")
    examples, waited = loop.loader.get(epoch)
    if epoch + 1 < loop.command.epochs:
        loop.loader.start(epoch + 1)  # read the next epoch while this one trains
    return examples, waited


def report(loop: EpochLoop, **fields) -> None:
    """status/trainer.json's fields, queued behind the writes before them (host 0 alone)."""
    if loop.writes is not None:
        loop.writes.submit(loop.heartbeat.update, what="status", **fields)


def log_epoch(record: EpochMetrics, epochs: int, examples: int, eta: float) -> None:
    log.info("epoch %d (%d/%d): HR@10 %.4f NDCG@10 %.4f loss %.4f | %s examples, %s examples/s, "
             "train %.1f s, eval %.1f s, waited %.2f s for data; ETA %s", record.epoch, record.epoch + 1, epochs,
             record.hr_at_10, record.ndcg_at_10, record.loss, f"{examples:,}", f"{record.examples_per_s:,.0f}",
             record.train_s, record.eval_s, record.data_wait_s, duration(eta))


def end_epoch(loop: EpochLoop, record: EpochMetrics) -> None:
    """Metrics, TensorBoard, status (queued, in this order), then the checkpoint (see the module docstring)."""
    config, progress, writes = loop.config, loop.progress, loop.writes
    epochs_done = record.epoch + 1
    reached = config.target_hr is not None and record.hr_at_10 >= config.target_hr
    finished = epochs_done == loop.command.epochs or reached
    if reached and epochs_done < loop.command.epochs:
        log.info("HR@10 %.4f reached the target %.4f after epoch %d: stopping", record.hr_at_10, config.target_hr,
                 record.epoch)
    due = loop.checkpoints is not None and checkpoint_due(loop, epochs_done, finished)
    if due:
        waited = loop.checkpoints.wait()  # at most one checkpoint in flight
        if waited >= 0.01:
            log.warning("epoch %d: waited %.2f s for the previous checkpoint's upload (checkpoint_wait_s)",
                        record.epoch, waited)
        record = dataclasses.replace(record, checkpoint_wait_s=waited)
    progress.history.append(record)
    progress.epochs_done, progress.finished = epochs_done, finished
    if writes is None:  # a host that does not write: its progress is all it keeps
        return
    history = list(progress.history)
    writes.submit(write_metrics, loop.run.metrics, history, what="metrics.jsonl")
    writes.submit(tensorboard.write, loop.run, history, progress.started, what="tensorboard")
    writes.submit(loop.heartbeat.update, examples_per_s=record.examples_per_s, flush=True, what="status")
    if due:
        loop.checkpoints.start(loop.net.model, checkpoint.State(loop.command.run_id, epochs_done, finished,
                                                            progress.started, config.model_config(), history))
        loop.checkpoints.last_epochs_done, loop.checkpoints.last_time = epochs_done, time.monotonic()


def checkpoint_due(loop: EpochLoop, epochs_done: int, finished: bool) -> bool:
    """The last epoch, --checkpoint-every epochs or minutes, or else the generator's buffer
    would fill with epochs that no checkpoint covers (they may be deleted only once one does)."""
    since = epochs_done - loop.checkpoints.last_epochs_done
    if finished or since >= max(1, loop.command.buffer_epochs - 1):
        return True
    if loop.config.checkpoint_every_minutes is not None:
        return time.monotonic() - loop.checkpoints.last_time >= 60 * loop.config.checkpoint_every_minutes
    return since >= loop.config.checkpoint_every


def consumed(run: RunDir, writes: BackgroundWriter, heartbeat: Heartbeat, covered: int):
    """Checkpointer.on_landed: the epochs a landed checkpoint covers are consumed. The status
    says so (the generator counts its buffer, and resumes, by it), then their folders go."""
    def landed(epochs_done: int) -> None:
        nonlocal covered
        writes.submit(heartbeat.update, epochs_done=epochs_done, flush=True, what="status")
        for epoch in range(covered, epochs_done):
            writes.submit(storage.delete, run.epoch_dir(epoch), what=f"delete epochs/{epoch:06d}")
        covered = max(covered, epochs_done)
    return landed


def finish(loop: EpochLoop, meta: DatasetMeta, choice: tuple) -> None:
    """The exported model (its weights put in by `exported`), the report, then result.json (the
    run's completion marker), then done."""
    run, config, command, progress = loop.run, loop.config, loop.command, loop.progress
    chosen, exported_record, exported_reason = choice
    model = multihost.undistributed(loop.net.model) if config.hosts > 1 else loop.net.model
    export.export(run, model, serving.read_ids(run, command.run_id, meta))
    try:
        from .report import write_report

        write_report(run, config.target_hr)
    except Exception as error:  # the report is a convenience; never fail a trained run for it
        log.warning("could not write the report: %s: %s", type(error).__name__, error)
    history = progress.history
    best = max(history, key=lambda m: m.hr_at_10) if history else None
    last = history[-1] if history else None
    result = Result(
        run_id=command.run_id, dataset=command.dataset.name, epochs_trained=len(history),
        best_epoch=best.epoch if best else None, best_hr_at_10=best.hr_at_10 if best else 0.0,
        best_ndcg_at_10=best.ndcg_at_10 if best else 0.0, last_hr_at_10=last.hr_at_10 if last else 0.0,
        last_ndcg_at_10=last.ndcg_at_10 if last else 0.0, target_hr=config.target_hr,
        reached_target=config.target_hr is not None and best is not None and best.hr_at_10 >= config.target_hr,
        wall_s=max(0.0, time.time() - progress.started), exported=chosen,
        exported_epoch=exported_record.epoch if exported_record else None,
        exported_hr_at_10=exported_record.hr_at_10 if exported_record else 0.0,
        exported_ndcg_at_10=exported_record.ndcg_at_10 if exported_record else 0.0, exported_reason=exported_reason,
    )
    try:
        storage.publish_once(run.result, result)
    except AlreadyPublished:
        log.warning("%s was already published; leaving it", run.result)
    log.info("done: %d epochs, best HR@10 %.4f (epoch %s), last HR@10 %.4f; exported epoch %s (%s, HR@10 %.4f)",
             result.epochs_trained, result.best_hr_at_10, result.best_epoch, result.last_hr_at_10,
             result.exported_epoch, result.exported, result.exported_hr_at_10)
    loop.heartbeat.update(state="done", epoch=None, message="complete")
