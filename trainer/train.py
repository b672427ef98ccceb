"""The trainer Job, top to bottom: command -> data -> NeuMF -> train/evaluate/checkpoint per epoch.

    ncf-trainer --data-dir DIR --dataset NAME [--epochs N] [--spawn-generator] ...

Order of work per epoch (DESIGN.md "Flow" and "Restarts"): wait for epochs/<k>/ready.json
(the next epoch is read in the background while this one trains), train, evaluate
HR@10 / NDCG@10, then checkpoint, then metrics.jsonl, then status/trainer.json, and only
then delete epochs/<k>/ (freeing a buffer slot for the generator). A restart resumes from
the checkpoint: it never trains an epoch twice into the result and never skips one.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from protocol import (AlreadyPublished, Command, DatasetMeta, DatasetSpec, EpochMetrics, InvalidInput, PeerError,
                      Result, RunDir, storage)
from protocol.cli import duration
from protocol.peer import Heartbeat, PeerWatch
from protocol.runfiles import epoch_numbers, write_metrics

log = logging.getLogger("ncf.trainer")

# ----------------------------------------------------------------------------- configuration
# Plain values. Model defaults depend on the dataset: MLPerf's reference settings for the
# ml-20m-sized sets, the NCF paper's untuned settings for the small ones (DESIGN.md
# "Reference numbers"). Every one can be overridden by its flag.
LARGE = dict(batch_size=2048, eval_batch_size=1_000_000, learning_rate=0.0005, mf_dim=64,
             layers=[256, 256, 128, 64], num_neg=4, epochs=20, l2=0.0)
SMALL = dict(batch_size=256, eval_batch_size=200_000, learning_rate=0.001, mf_dim=16,
             layers=[64, 32, 16, 8], num_neg=4, epochs=20, l2=0.0)
# ml-100k (GitHub issue 4: HR@10 >= 0.20 within 20 epochs, 999 eval negatives): SMALL
# peaks at 0.185-0.189 in paper mode (epoch ~8) and then overfits. Batch 1024 with lr 0.002
# (same model) peaks at 0.2025 / 0.196 / 0.202 for seeds 0 / 1 / 2 (epochs 16 / 14 / 11) in
# paper mode and at 0.237 in mlperf mode, through the real pipeline on CPU. Tried and no better: l2 1e-6..1e-4, lr 0.0005, 8 or 16
# negatives, mf_dim 32 + layers 128,64,32,16, batch 512 or 2048, per-epoch lr decay. For
# scale: EASE (a strong linear baseline) scores 0.196 on this split, most-popular 0.109.
ML_100K = dict(SMALL, batch_size=1024, learning_rate=0.002)
DEFAULTS = {"ml-20m": LARGE, "synthetic-20m": LARGE, "ml-1m": SMALL, "ml-100k": ML_100K, "synthetic-small": SMALL}
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-8  # MLPerf's Adam


@dataclass
class Config:
    data_dir: str
    dataset: str
    ratings: str | None = None
    epochs: int = 20
    batch_size: int = 2048
    eval_batch_size: int = 1_000_000  # candidate scores per evaluation step (whole users)
    num_neg: int = 4
    eval_negatives: int = 999
    eval_mode: str = "mlperf"
    learning_rate: float = 0.0005
    mf_dim: int = 64
    layers: list[int] = dataclasses.field(default_factory=lambda: [256, 256, 128, 64])
    l2: float = 0.0  # L2 penalty on the embeddings per batch
    seed: int = 0
    target_hr: float | None = None
    buffer_epochs: int = 3
    mixed_precision: bool = False
    xla: bool = False
    spawn_generator: bool = False
    generator_workers: int | None = None
    start_timeout: float = 3600.0
    peer_timeout: float = 300.0
    heartbeat_interval: float = 10.0
    steps_per_execution: int = 16  # batches per tf.data element and per compiled call (less overhead per step)

    def model_config(self) -> dict:
        """What a checkpoint must have been trained with to be resumed by these flags."""
        return {"mf_dim": self.mf_dim, "layers": list(self.layers), "learning_rate": self.learning_rate,
                "l2": self.l2}


def parse_args(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(prog="ncf-trainer", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="run directory: local path or gs://bucket/prefix")
    p.add_argument("--dataset", required=True, choices=sorted(DEFAULTS))
    p.add_argument("--ratings", help="raw ratings file (local or gs://) for MovieLens sets; default: download")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--eval-batch-size", type=int, help="candidate scores per evaluation step")
    p.add_argument("--num-neg", type=int)
    p.add_argument("--eval-negatives", type=int, default=999)
    p.add_argument("--eval-mode", choices=["mlperf", "paper"], default="mlperf")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--mf-dim", type=int)
    p.add_argument("--layers", help="MLP widths, e.g. 64,32,16,8 (the first is the concatenated embedding)")
    p.add_argument("--l2", type=float, help="L2 penalty on the embeddings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-hr", type=float, help="stop once HR@10 reaches this")
    p.add_argument("--buffer-epochs", type=int, default=3)
    p.add_argument("--mixed-precision", action="store_true", help="mixed_float16 on GPU, mixed_bfloat16 on TPU")
    p.add_argument("--xla", action="store_true", help="compile train and eval steps with XLA")
    p.add_argument("--spawn-generator", action="store_true", help="run the generator as a child process")
    p.add_argument("--generator-workers", type=int)
    p.add_argument("--start-timeout", type=float, default=3600.0)
    p.add_argument("--peer-timeout", type=float, default=300.0)
    p.add_argument("--heartbeat-interval", type=float, default=10.0)
    p.add_argument("--steps-per-execution", type=int, default=16,
                   help="batches per input element and per compiled train call")
    a = p.parse_args(argv)
    d = DEFAULTS[a.dataset]
    pick = lambda value, key: d[key] if value is None else value  # noqa: E731
    try:
        layers = [int(x) for x in a.layers.split(",")] if a.layers else list(d["layers"])
    except ValueError:
        raise InvalidInput(f"--layers: expected comma-separated integers, got {a.layers!r}") from None
    config = Config(
        data_dir=a.data_dir, dataset=a.dataset,
        ratings=a.ratings if a.ratings is None or "://" in a.ratings else os.path.abspath(a.ratings),
        epochs=pick(a.epochs, "epochs"), batch_size=pick(a.batch_size, "batch_size"),
        eval_batch_size=pick(a.eval_batch_size, "eval_batch_size"), num_neg=pick(a.num_neg, "num_neg"),
        eval_negatives=a.eval_negatives, eval_mode=a.eval_mode, learning_rate=pick(a.learning_rate, "learning_rate"),
        mf_dim=pick(a.mf_dim, "mf_dim"), layers=layers, l2=pick(a.l2, "l2"), seed=a.seed, target_hr=a.target_hr,
        buffer_epochs=a.buffer_epochs, mixed_precision=a.mixed_precision, xla=a.xla,
        spawn_generator=a.spawn_generator, generator_workers=a.generator_workers, start_timeout=a.start_timeout,
        peer_timeout=a.peer_timeout, heartbeat_interval=a.heartbeat_interval,
        steps_per_execution=a.steps_per_execution,
    )
    for name in ("epochs", "batch_size", "eval_batch_size", "num_neg", "eval_negatives", "mf_dim",
                 "buffer_epochs", "steps_per_execution"):
        if getattr(config, name) < 1:
            raise InvalidInput(f"--{name.replace('_', '-')}: expected a positive number, got {getattr(config, name)}")
    if config.learning_rate <= 0 or config.l2 < 0 or any(w < 1 for w in layers) or layers[0] % 2:
        raise InvalidInput(f"expected a positive learning rate and positive layer widths starting with an even one, "
                           f"got --learning-rate {config.learning_rate} --layers {layers}")
    return config


# ----------------------------------------------------------------------------- command.json
def new_run_id(dataset: str) -> str:
    return f"{dataset}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def publish_or_resume(run: RunDir, config: Config) -> Command:
    """Publishes command.json with a new run_id, or resumes the run already there if its
    settings equal ours; if they differ, exit code 2 and the file is left untouched."""
    wanted = Command(
        run_id=new_run_id(config.dataset), dataset=DatasetSpec(name=config.dataset, ratings=config.ratings),
        epochs=config.epochs, num_neg=config.num_neg, train_batch_size=config.batch_size,
        eval_negatives=config.eval_negatives, eval_mode=config.eval_mode, seed=config.seed,
        buffer_epochs=config.buffer_epochs,
    )
    for _ in range(2):
        if storage.exists(run.command):
            existing = storage.read_message(run.command, Command)
            changed = existing.differences(wanted)
            if changed:
                mine, theirs = wanted.to_dict(), existing.to_dict()
                raise InvalidInput(
                    f"{run.command} holds run {existing.run_id!r} with different settings: "
                    + "; ".join(f"{k}: {theirs[k]!r} in the file, {mine[k]!r} from the flags" for k in changed)
                    + ". Rerun with the same settings to resume it, or use a new --data-dir")
            log.info("resuming run %s (command.json matches the flags)", existing.run_id)
            return existing
        try:
            storage.publish_once(run.command, wanted)
            log.info("published %s: run %s", run.command, wanted.run_id)
            return wanted
        except AlreadyPublished:
            continue  # somebody published first: compare with theirs
    raise InvalidInput(f"{run.command}: could not publish or read it")


# ----------------------------------------------------------------------------- the generator child
def _die_with_parent() -> None:
    # In the child, before exec: SIGTERM when the trainer dies, even by kill -9 (Linux).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn_generator(config: Config) -> subprocess.Popen:
    argv = [sys.executable, "-m", "generator", "--data-dir", config.data_dir,
            "--heartbeat-interval", str(config.heartbeat_interval), "--peer-timeout", str(config.peer_timeout),
            "--start-timeout", str(config.start_timeout)]
    if config.generator_workers:
        argv += ["--workers", str(config.generator_workers)]
    log.info("starting the generator: %s", " ".join(argv))
    # stdout/stderr inherited: the child's log lines go to the same stderr.
    return subprocess.Popen(argv, preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def stop_child(child: subprocess.Popen | None, grace: float = 30.0) -> None:
    if child is None:
        return
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("the generator did not stop within %.0f s of SIGTERM; killing it", grace)
            child.kill()
    child.wait()
    log.info("the generator child exited with code %s", child.returncode)


# ----------------------------------------------------------------------------- main
def main(argv: list[str]) -> None:
    config = parse_args(argv)
    run = RunDir(config.data_dir)
    storage.ensure_writable(run.url)
    command = publish_or_resume(run, config)
    child = spawn_generator(config) if config.spawn_generator else None
    try:
        with Heartbeat(run, "trainer", interval=config.heartbeat_interval) as heartbeat:
            heartbeat.update(run_id=command.run_id)
            train(config, run, command, heartbeat, child)
    finally:
        stop_child(child)


def train(config: Config, run: RunDir, command: Command, heartbeat: Heartbeat, child) -> None:
    from trainer import checkpoint, data, evaluation, strategy
    from trainer.model import build_neumf

    import keras
    import tensorflow as tf

    peer = PeerWatch(run, "generator", config.start_timeout, config.peer_timeout)

    def wait_check(url: str) -> None:
        # While waiting for url: the generator must be alive (PeerWatch) and, if it is our
        # child, still running; a generator that is done will never write it.
        if child is not None and child.poll() is not None and child.returncode != 0:
            raise PeerError(f"the generator (child process) exited with code {child.returncode}")
        status = peer.check()
        if status is not None and status.state == "done" and status.run_id == command.run_id \
                and not storage.exists(url):
            raise PeerError(f"the generator reports done, but {url} does not exist")

    def wait_for(url: str, what: str) -> None:
        if not storage.exists(url):
            heartbeat.update(state="waiting", message=f"waiting for {what}")
            storage.wait_for(url, float("inf"), what, check=lambda: wait_check(url))

    # Resume: what is already done?
    done = storage.exists(run.result)
    state = None if done else checkpoint.load_state(run, command.run_id, config.model_config())
    if done:
        log.info("%s exists: run %s is complete", run.result, command.run_id)
        heartbeat.update(state="done", message="complete")
        return
    epochs_done = state[0].epochs_done if state else 0
    finished = state[0].finished if state else False
    history: list[EpochMetrics] = list(state[0].history) if state else []
    started = state[0].started if state else time.time()
    if state:
        log.info("resuming from the checkpoint after epoch %d", epochs_done - 1)
        # A kill between checkpoint and delete leaves consumed epochs and a stale metrics file.
        for epoch in epoch_numbers(run):
            if epoch < epochs_done:
                log.info("deleting epochs/%06d (consumed before the restart)", epoch)
                storage.delete(run.epoch_dir(epoch))
        write_metrics(run.metrics, history)
    heartbeat.update(epochs_done=epochs_done)

    # Dataset shape and eval data from the generator.
    wait_for(run.meta, "dataset/meta.json from the generator")
    meta = storage.read_message(run.meta, DatasetMeta)
    if meta.run_id != command.run_id:
        raise InvalidInput(f"{run.meta} belongs to run {meta.run_id!r}, but this run is {command.run_id!r}: "
                           f"refusing data from another run")
    command.check_against(meta, run.meta)
    log.info("dataset %s: %d users, %d items, %d training positives", meta.dataset, meta.num_users,
             meta.num_items, meta.num_train)
    wait_for(run.ready(run.eval_dir), "the eval data (dataset/eval/ready.json) from the generator")
    ready = data.read_ready(run.eval_dir, command.run_id, "eval", None)
    eval_cols = data.read_columns(run.eval_dir, ready, ("user", "items", "mask"))
    eval_items = eval_cols["items"]
    if eval_items.ndim != 2 or eval_items.shape[1] != 1 + command.eval_negatives or eval_cols["mask"].shape != eval_items.shape:
        raise InvalidInput(f"{run.eval_dir}: items/mask of shape {eval_items.shape}/{eval_cols['mask'].shape}, "
                           f"expected [users, {1 + command.eval_negatives}]")
    log.info("eval data: %d users x %d candidates", *eval_items.shape)

    # Model, optimizer, strategy.
    keras.backend.clear_session()
    keras.utils.set_random_seed(command.seed)
    choice, distribution = strategy.setup(config.mixed_precision)
    with distribution.scope():
        model = build_neumf(meta.num_users, meta.num_items, config.mf_dim, config.layers, config.l2)
        model.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON),
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            jit_compile=config.xla,
        )
        if state:
            checkpoint.restore(model, state[1], state[2])
    train_epoch = epoch_trainer(model, distribution, config.xla)
    log.info("NeuMF: mf_dim %d, layers %s, %d parameters; batch %d, lr %g", config.mf_dim, config.layers,
             model.count_params(), config.batch_size, config.learning_rate)
    score_fn = tf.function(lambda u, i: model((u, i), training=False), jit_compile=config.xla, reduce_retracing=True)

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if choice.kind in ("tpu", "multi_gpu"):
            return model.predict_on_batch((users.astype(np.int32), items.astype(np.int32)))
        return score_fn(tf.constant(users.astype(np.int32)), tf.constant(items.astype(np.int32))).numpy()

    # The epochs.
    loader = data.Prefetcher(run, command.run_id, wait_check)
    try:
        loop_started, first_epoch = time.monotonic(), epochs_done
        for epoch in range(epochs_done, command.epochs):
            if finished:
                break
            if not loader.ready(epoch) and not storage.exists(run.ready(run.epoch_dir(epoch))):
                heartbeat.update(state="waiting", epoch=epoch, message=f"waiting for epoch {epoch}")
            batch, waited = loader.get(epoch)
            if epoch + 1 < command.epochs:
                loader.start(epoch + 1)  # read the next epoch while this one trains
            heartbeat.update(state="training", epoch=epoch, message=None)

            began = time.monotonic()
            loss = train_epoch(data.blocks(batch.user, batch.item, batch.label, config.batch_size,
                                           config.steps_per_execution, cast_ids=choice.kind == "tpu"))
            train_s = time.monotonic() - began
            began = time.monotonic()
            hr, ndcg = evaluation.evaluate(score, eval_cols["user"], eval_items, eval_cols["mask"],
                                           config.eval_batch_size)
            eval_s = time.monotonic() - began
            record = EpochMetrics(epoch=epoch, hr_at_10=hr, ndcg_at_10=ndcg, loss=loss,
                                  examples_per_s=batch.num_examples / train_s, data_wait_s=waited, train_s=train_s,
                                  eval_s=eval_s, time=time.time())
            eta = (time.monotonic() - loop_started) / (epoch + 1 - first_epoch) * (command.epochs - epoch - 1)
            log.info("epoch %d (%d/%d): HR@10 %.4f NDCG@10 %.4f loss %.4f | %s examples, %s examples/s, "
                     "train %.1f s, eval %.1f s, waited %.2f s for data; ETA %s", epoch, epoch + 1, command.epochs,
                     hr, ndcg, record.loss, f"{batch.num_examples:,}", f"{record.examples_per_s:,.0f}",
                     train_s, eval_s, waited, duration(eta))
            history.append(record)
            epochs_done = epoch + 1
            finished = epochs_done == command.epochs or (config.target_hr is not None and hr >= config.target_hr)
            if finished and epochs_done < command.epochs:
                log.info("HR@10 %.4f reached the target %.4f after epoch %d: stopping", hr, config.target_hr, epoch)

            # Checkpoint, metrics, status, delete: in this order (see the module docstring).
            checkpoint.save(run, model, checkpoint.State(command.run_id, epochs_done, finished, started,
                                                         config.model_config(), history))
            write_metrics(run.metrics, history)
            heartbeat.update(epochs_done=epochs_done, examples_per_s=record.examples_per_s, flush=True)
            storage.delete(run.epoch_dir(epoch))
            del batch
    finally:
        loader.close()

    # The end: exported model, report, result.json (the run's completion marker), done.
    export(run, model)
    try:
        from trainer.report import write_report

        write_report(run, config.target_hr)
    except Exception as error:  # the report is a convenience; never fail a trained run for it
        log.warning("could not write the report: %s: %s", type(error).__name__, error)
    best = max(history, key=lambda m: m.hr_at_10) if history else None
    last = history[-1] if history else None
    result = Result(
        run_id=command.run_id, dataset=command.dataset.name, epochs_trained=len(history),
        best_epoch=best.epoch if best else None, best_hr_at_10=best.hr_at_10 if best else 0.0,
        best_ndcg_at_10=best.ndcg_at_10 if best else 0.0, last_hr_at_10=last.hr_at_10 if last else 0.0,
        last_ndcg_at_10=last.ndcg_at_10 if last else 0.0, target_hr=config.target_hr,
        reached_target=config.target_hr is not None and best is not None and best.hr_at_10 >= config.target_hr,
        wall_s=max(0.0, time.time() - started),
    )
    try:
        storage.publish_once(run.result, result)
    except AlreadyPublished:
        log.warning("%s was already published; leaving it", run.result)
    log.info("done: %d epochs, best HR@10 %.4f (epoch %s), last HR@10 %.4f", result.epochs_trained,
             result.best_hr_at_10, result.best_epoch, result.last_hr_at_10)
    heartbeat.update(state="done", epoch=None, message="complete")


# ----------------------------------------------------------------------------- one epoch
def epoch_trainer(model, distribution, jit_compile: bool):
    """Returns train_epoch(blocks) -> the epoch's loss, for a dataset from data.blocks.

    Each batch is one optimizer step through Keras' own train_step (compiled loss, L2
    penalty, loss scaling under mixed_float16, Adam), in the data's order. One compiled
    call (XLA if jit_compile) trains a whole block, so tf.data and Python are paid once per
    block, not per batch. The loop over a block's batches runs outside the replicas, as
    Keras' steps_per_execution loop does: MirroredStrategy cannot all-reduce gradients in
    control flow inside a replica. The loss is Keras' mean over the epoch's batches
    (weighted by their sizes), as model.fit reports it."""
    import tensorflow as tf

    with distribution.scope():
        if not model.optimizer.built:  # its variables must exist before the first compiled call
            model.optimizer.build(model.trainable_variables)

    @tf.autograph.experimental.do_not_convert
    def train_batch(block, k):
        (user, item), label = block
        return model.train_step(((user[:, k], item[:, k]), label[:, k]))

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def train_block(block):
        for k in tf.range(tf.shape(distribution.experimental_local_results(block[1])[0])[1]):
            distribution.run(train_batch, args=(block, k))

    def train_epoch(blocks) -> float:
        model.reset_metrics()
        for block in distribution.experimental_distribute_dataset(blocks):
            train_block(block)
        return float(model.get_metrics_result()["loss"])

    return train_epoch


def export(run: RunDir, model) -> None:
    """model/model.keras (Keras) and model/saved_model/ (TF SavedModel, serving signature
    on int32 user and item ids, output the logit), uploaded through protocol.storage."""
    with tempfile.TemporaryDirectory(prefix="ncf-export-") as tmp:
        model.save(os.path.join(tmp, "model.keras"))
        try:
            model.export(os.path.join(tmp, "saved_model"), verbose=False)
        except Exception as error:  # e.g. a strategy that cannot export; the .keras file still serves
            log.warning("SavedModel export failed (%s: %s); model.keras only", type(error).__name__, error)
        for folder, _, files in os.walk(tmp):
            for name in files:
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, tmp).split(os.sep)
                with open(path, "rb") as f:
                    storage.write_bytes(storage.join(run.model, *relative), f.read())
    log.info("exported the model to %s", run.model)
