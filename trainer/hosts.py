"""Several trainer hosts, one run: who is who, and what share of the data each takes.

One trainer process per GPU node or TPU worker; together they train synchronously, data
parallel, on Keras 3's JAX backend (docs/multihost-spike.md says why not TensorFlow's
MultiWorkerMirroredStrategy). Host 0 runs JAX's coordination service and alone writes to the
run directory; every host reads its share of each epoch and of the eval users.

The defaults come from what Kubernetes and GKE put in a pod's environment: an Indexed Job's
JOB_COMPLETION_INDEX, and on a multi-host TPU slice TPU_WORKER_ID and TPU_WORKER_HOSTNAMES.
"""

from __future__ import annotations

import os

COORDINATOR_PORT = 8476  # JAX's customary coordinator port (jax.distributed's own examples)


def _tpu_workers() -> list[str]:
    return [name for name in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if name]


def default_count() -> int:
    return len(_tpu_workers()) or 1


def default_index() -> int:
    for name in ("JOB_COMPLETION_INDEX", "TPU_WORKER_ID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def default_coordinator() -> str | None:
    workers = _tpu_workers()
    return f"{workers[0]}:{COORDINATOR_PORT}" if workers else None


def share(size: int, index: int, count: int) -> tuple[int, int]:
    """Host `index`'s contiguous range [start, stop) of `size` things: the hosts' ranges
    cover them in order and differ in length by at most one."""
    return size * index // count, size * (index + 1) // count
