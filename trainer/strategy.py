"""The distribution strategy and precision policy, chosen from the hardware.

TPU (a TPUClusterResolver connects) -> TPUStrategy; several GPUs -> MirroredStrategy;
one GPU -> the default strategy on it; otherwise CPU. `choose` is pure (devices are
injected), so the selection is unit-tested on machines without TPUs or GPUs.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from typing import Any

from protocol.errors import first_line

log = logging.getLogger("ncf.trainer")

TPU_ENV = ("TPU_NAME", "TPU_WORKER_ID", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_ACCELERATOR_TYPE")


@dataclass(frozen=True)
class Hardware:
    tpu: Any = None  # a connected TPUClusterResolver, or None
    gpus: tuple[str, ...] = ()


@dataclass(frozen=True)
class Choice:
    kind: str  # "tpu", "multi_gpu", "gpu", "cpu"
    precision: str  # keras dtype policy name
    devices: int  # replicas


def choose(hardware: Hardware, mixed_precision: bool = False) -> Choice:
    if hardware.tpu is not None:
        return Choice("tpu", "mixed_bfloat16" if mixed_precision else "float32", 0)
    if len(hardware.gpus) > 1:
        return Choice("multi_gpu", "mixed_float16" if mixed_precision else "float32", len(hardware.gpus))
    if len(hardware.gpus) == 1:
        return Choice("gpu", "mixed_float16" if mixed_precision else "float32", 1)
    # bfloat16 on CPU is for exercising the mixed-precision path, not for speed.
    return Choice("cpu", "mixed_bfloat16" if mixed_precision else "float32", 1)


def detect() -> Hardware:
    """Looks for a TPU (only where the environment says one may exist: probing the GCE
    metadata server elsewhere costs time), then for GPUs."""
    import tensorflow as tf

    tpu = None
    if any(os.environ.get(k) for k in TPU_ENV) or glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        try:
            name = os.environ.get("TPU_NAME") or "local"
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            tpu = resolver
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            log.info("no TPU: %s", first_line(error, limit=None))
    gpus = tuple(d.name for d in tf.config.list_physical_devices("GPU"))
    return Hardware(tpu=tpu, gpus=gpus)


def make(choice: Choice, hardware: Hardware):
    """Builds the tf.distribute strategy for a choice (TPUStrategy, MirroredStrategy or default)."""
    import tensorflow as tf

    if choice.kind == "tpu":
        return tf.distribute.TPUStrategy(hardware.tpu)
    if choice.kind == "multi_gpu":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()  # default: one GPU if present, else CPU


def setup(mixed_precision: bool, hardware: Hardware | None = None):
    """Detects the hardware, sets the global dtype policy and returns (choice, strategy)."""
    import keras

    hardware = hardware if hardware is not None else detect()
    choice = choose(hardware, mixed_precision)
    keras.mixed_precision.set_global_policy(choice.precision)
    strategy = make(choice, hardware)
    log.info("hardware: %s (%d replica(s)), precision %s", choice.kind, strategy.num_replicas_in_sync, choice.precision)
    return choice, strategy
