"""The distribution strategy and precision policy, chosen from the hardware.

TPU (a TPUClusterResolver connects) -> TPUStrategy; several GPUs -> MirroredStrategy;
one GPU -> the default strategy on it; otherwise CPU. `choose` is pure (devices are
injected), so the selection is unit-tested on machines without TPUs or GPUs.

`--accelerator` says what the trainer may run on: auto (whatever `detect` finds), cpu
(GPUs hidden, no TPU looked for), gpu or tpu. With gpu or tpu a trainer that finds no
such device exits 2 at once (`require`), naming what it found and why: TensorFlow falls
back to the CPU by itself when its CUDA libraries fail to load, and a failed TPU
initialisation would otherwise leave a job "training" on the host CPU of an accelerator
node until its deadline.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

from protocol.errors import InvalidInput, describe_error

log = logging.getLogger("ncf.trainer")

Accelerator = Literal["auto", "cpu", "gpu", "tpu"]
# What GKE injects into a container given google.com/tpu (TPU_NAME: a Cloud TPU VM), and the
# device files a TPU host exposes.
TPU_ENV = ("TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "TPU_NAME",
           "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")
TPU_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*")


@dataclass(frozen=True)
class Hardware:
    tpu: Any = None  # a connected TPUClusterResolver, or None
    gpus: tuple[str, ...] = ()
    tpu_error: str | None = None  # why a TPU the environment announces did not initialise


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


def tpu_announced() -> bool:
    """Whether the environment says a TPU may be attached (probing the GCE metadata server
    elsewhere costs time)."""
    return any(os.environ.get(k) for k in TPU_ENV) or any(glob.glob(pattern) for pattern in TPU_DEVICES)


def connect_tpu() -> tuple[Any, str | None]:
    """A connected, initialised TPUClusterResolver, or None and the initialisation error."""
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME") or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver, None
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        return None, describe_error(error, limit=None)


def detect(accelerator: Accelerator = "auto") -> Hardware:
    """The devices the trainer may use: a TPU (looked for only where the environment
    announces one, or with --accelerator tpu), then GPUs; with cpu, none (GPUs hidden)."""
    import tensorflow as tf

    if accelerator == "cpu":
        tf.config.set_visible_devices([], "GPU")
        return Hardware()
    tpu, tpu_error = None, None
    if accelerator == "tpu" and not tpu_announced():
        tpu_error = f"no TPU announced (none of {', '.join(TPU_ENV)} set, no {' or '.join(TPU_DEVICES)})"
    elif accelerator == "tpu" or (accelerator == "auto" and tpu_announced()):
        tpu, tpu_error = connect_tpu()
        if tpu_error and accelerator == "auto":
            log.warning("the environment announces a TPU, but it did not initialise (%s): not using it", tpu_error)
    gpus = tuple(d.name for d in tf.config.list_physical_devices("GPU"))
    return Hardware(tpu=tpu, gpus=gpus, tpu_error=tpu_error)


def require(accelerator: Accelerator, hardware: Hardware) -> None:
    """InvalidInput (exit 2), in one line, when --accelerator gpu or tpu finds no such device."""
    found = f"{len(hardware.gpus)} GPU(s) and no TPU" if hardware.gpus else "only the CPU"
    if accelerator == "tpu" and hardware.tpu is None:
        raise InvalidInput(f"--accelerator tpu: expected a TPU, found {found}: {hardware.tpu_error}")
    if accelerator == "gpu" and not hardware.gpus:
        raise InvalidInput(f"--accelerator gpu: expected a GPU, found {found}: {why_no_gpu()}")


def why_no_gpu() -> str:
    """What TensorFlow's build and the container say about the missing GPU."""
    import tensorflow as tf

    if not tf.test.is_built_with_cuda():
        return f"this TensorFlow ({tf.__version__}) is built without CUDA (the image's TRAIN_EXTRA is not train-cuda?)"
    cuda = tf.sysconfig.get_build_info().get("cuda_version", "?")
    devices = "present" if glob.glob("/dev/nvidia[0-9]*") else "absent"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"TensorFlow {tf.__version__} is built with CUDA {cuda} but lists no GPU: its CUDA libraries failed to "
            f"load (see its log above) or no GPU is visible (/dev/nvidia* {devices}, CUDA_VISIBLE_DEVICES "
            f"{'unset' if visible is None else repr(visible)})")


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
