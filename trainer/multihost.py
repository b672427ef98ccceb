"""Training on several hosts (--hosts > 1): Keras 3 on JAX, jax.distributed, DataParallel.

docs/multihost-spike.md chose this over TensorFlow's MultiWorkerMirroredStrategy: with
the trainer's compiled loop that strategy counts Adam's step once per worker (a wrong
update, silently) and fails under XLA, while Keras on JAX keeps the hosts' weights
bit-identical and equal to one host's step on the same global batch.

Every host runs the same steps on its batch / hosts rows of each global batch (Keras turns
them into one global array with jax.make_array_from_process_local_data), so the gradient
is the global batch's. A host that dies fails the collectives of the others: JAX's
coordination service aborts them within --peer-timeout (its heartbeat timeout), and the
Job restarts the trainer, which resumes from the checkpoint. Keras picks its backend when
it is first imported, so `use_jax` runs before anything imports it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import numpy as np

from protocol import InvalidInput

from . import checkpoint, evaluation
from .config import Config
from .data import Epoch
from .hosts import join

log = logging.getLogger("ncf.trainer")
SHUTDOWN_TIMEOUT_S = 3 * 3600


def use_jax(config: Config) -> None:
    """Keras on JAX for this process; JAX on the CPU alone with --accelerator cpu."""
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != "jax":
        raise RuntimeError(f"Keras was imported with the {keras.backend.backend()} backend before --hosts chose JAX")
    os.environ["KERAS_BACKEND"] = "jax"
    if config.accelerator == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"


def start(config: Config) -> None:
    """Joins the other hosts (a PeerError naming those that never come), then JAX's runtime;
    a missing --accelerator gpu or tpu is exit 2, as with one host."""
    use_jax(config)
    join(config.hosts, config.host_index, config.coordinator, config.start_timeout)
    import jax

    jax.distributed.initialize(config.coordinator, config.hosts, config.host_index,
                               initialization_timeout=max(1, int(config.start_timeout)),
                               heartbeat_timeout_seconds=max(1, int(config.peer_timeout)),
                               # Host 0 exports after the last step, while the others wait at exit; a
                               # host that dies meanwhile is caught by the heartbeat instead.
                               shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    platform = jax.default_backend()
    if config.accelerator in ("gpu", "tpu") and platform != config.accelerator:
        raise InvalidInput(f"--accelerator {config.accelerator}: expected a {config.accelerator.upper()}, "
                           f"JAX found {platform} devices only: {jax.local_devices()}")
    log.info("trainer host %d of %d: %d local and %d global %s device(s)", config.host_index, config.hosts,
             jax.local_device_count(), jax.device_count(), platform)


def build(config: Config, seed: int, num_users: int, num_items: int, saved: checkpoint.Saved | None):
    """NeuMF replicated on every device of every host, restored from the checkpoint if any:
    (model, train_epoch(Epoch) -> (loss, examples trained), evaluate(users, items, mask) ->
    (HR@10, NDCG@10) over every host's users)."""
    import jax
    import keras

    from .model import build_neumf, compile_neumf

    keras.utils.set_random_seed(seed)  # the same initial weights on every host
    policy = {"gpu": "mixed_float16"}.get(jax.default_backend(), "mixed_bfloat16")
    keras.mixed_precision.set_global_policy(policy if config.mixed_precision else "float32")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices(),
                                                                        auto_shard_dataset=False))
    model = compile_neumf(build_neumf(num_users, num_items, config.mf_dim, config.layers, config.l2),
                          config.learning_rate, True, config.adam(), config.warmup_steps,
                          steps_per_execution=config.steps_per_execution)
    if saved is not None:
        checkpoint.restore(model, saved)
    return model, epoch_trainer(model, config.batch_size // config.hosts), evaluator(model, config.eval_batch_size)


def epoch_trainer(model, host_batch: int) -> Callable[[Epoch], tuple[float, int]]:
    """Every host trains the same number of steps: as many full global batches as the host with
    the fewest examples has; the rest of the epoch is dropped (metrics.jsonl's dropped_examples)."""
    import jax

    def train_epoch(examples: Epoch) -> tuple[float, int]:
        steps = examples.smallest_share // host_batch
        if steps == 0:
            raise InvalidInput(f"epoch {examples.epoch}: {examples.smallest_share} examples on a host, fewer than "
                               f"one batch of {host_batch} (--batch-size / --hosts)")
        n = steps * host_batch
        history = model.fit((examples.user[:n], examples.item[:n]), examples.label[:n], batch_size=host_batch,
                            epochs=1, shuffle=False, verbose=0)
        return float(history.history["loss"][-1]), n * jax.process_count()

    return train_epoch


def evaluator(model, batch_candidates: int) -> Callable[..., tuple[float, float]]:
    """Each host ranks its own users on its own device, without collectives; the hit and NDCG
    sums are then all-gathered, so every host gets the same HR@10 and NDCG@10."""
    import jax
    from jax.experimental import multihost_utils

    @jax.jit
    def logits(trainable, non_trainable, users, items):
        return model.stateless_call(trainable, non_trainable, (users, items), training=False)[0]

    def evaluate(users: np.ndarray, items: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
        # The weights are replicated: this host's copy, on its own first device.
        trainable = [v.value.addressable_data(0) for v in model.trainable_variables]
        non_trainable = [v.value.addressable_data(0) for v in model.non_trainable_variables]
        rank = evaluation.all_ranks(lambda u, i: logits(trainable, non_trainable, u.astype(np.int32),
                                                        i.astype(np.int32)), users, items, mask, batch_candidates)
        hit, ndcg = evaluation.hit_and_ndcg(rank)
        local = np.array([hit.sum(), ndcg.sum(), len(rank)], np.float32)
        hits, ndcgs, users_all = multihost_utils.process_allgather(local).reshape(-1, 3).sum(axis=0)
        return float(hits / users_all), float(ndcgs / users_all)

    return evaluate


def undistributed(model):
    """A copy of the model outside the distribution, with this host's replica of its weights:
    saving the distributed model is a collective (every host must join), and host 0 exports alone."""
    import keras

    weights = model.get_weights()
    keras.distribution.set_distribution(None)
    copy = keras.models.clone_model(model)
    copy.set_weights(weights)
    return copy
