"""The generator's configuration: the one table of ncf-generator's flags (`Options`).

It takes everything about the data from the trainer's command.json, so its flags are where the
run lives, its timeouts and its own resources. How to add a flag: trainer/config.py (a
generator flag's `chart=` key is under generator: in the chart's values). A flag added here
also reaches the trainer as --generator-NAME, passed on by --spawn-generator, unless it is
`per_pod` (it places one pod among the run's several; a spawned generator is the only pod).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from protocol.cli import NON_NEGATIVE, POSITIVE
from protocol.defaults import HEARTBEAT_INTERVAL_S, PEER_TIMEOUT_S, PERMISSION_WAIT_HELP, PERMISSION_WAIT_S, START_TIMEOUT_S
from protocol.flags import flag

# cgroup v2: "<quota> <period>" in microseconds, or "max <period>". A pod's limits.cpu shows
# only here: the CPUs a container sees (affinity) are the node's.
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"
DEFAULT_PART_EXAMPLES = 1_000_000
# Measured with bench/bucket.py through the chaos bucket shaped to 25 MB/s + 20 ms per
# connection: 16 in flight reach the 2-core machine's limit (8 do not fill the link).
DEFAULT_UPLOAD_CONCURRENCY = 16
SPAWNED_IS_ONE_POD = "the trainer's --spawn-generator child is the run's one generator pod"


def job_completion_index() -> int:
    """This pod's index in an Indexed Job (Kubernetes sets JOB_COMPLETION_INDEX), else 0."""
    return int(os.environ.get("JOB_COMPLETION_INDEX", "0"))


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup CPU limit."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open(CGROUP_CPU_MAX) as f:
            quota, period = f.read().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 here, or not this format: no limit known
        pass
    return cpus


@dataclass(frozen=True)
class Options:
    data_dir: str = flag(help="run directory: a local path or gs://bucket/prefix",
                         not_in_chart="set from dataDir, the run directory both Jobs share")
    workers: int = flag(default_factory=usable_cpus, bounds=POSITIVE, chart="workers",
                        default_text="the CPUs this container may use",
                        help="worker threads for sampling and writing; does not change the output")
    start_timeout: float = flag(START_TIMEOUT_S, bounds=POSITIVE, chart="timeouts.start",
                                help="seconds to wait for command.json and the trainer's first heartbeat "
                                     "(GPU and TPU nodes can take many minutes to provision)")
    peer_timeout: float = flag(PEER_TIMEOUT_S, bounds=POSITIVE, chart="timeouts.peer",
                               help="seconds the trainer's heartbeat may stay unchanged before giving up")
    heartbeat_interval: float = flag(HEARTBEAT_INTERVAL_S, bounds=POSITIVE, chart="timeouts.heartbeatInterval",
                                     help="seconds between rewrites of status/generator.json")
    permission_wait: float = flag(PERMISSION_WAIT_S, bounds=NON_NEGATIVE, chart="timeouts.permissionWait",
                                  help=PERMISSION_WAIT_HELP)
    cache_dir: str | None = flag(None, chart="cacheDir", default_text="ncf-cache next to the run directory",
                                 help="where preprocessed datasets are cached, local or gs://")
    part_examples: int = flag(DEFAULT_PART_EXAMPLES, bounds=POSITIVE, chart="partExamples",
                              help="training examples per part file; it is part of an epoch's byte layout, "
                                   "so keep it fixed across restarts of one run")
    upload_concurrency: int = flag(DEFAULT_UPLOAD_CONCURRENCY, bounds=POSITIVE, chart="uploadConcurrency",
                                   help="part uploads in flight (measured with bench/bucket.py); at most twice "
                                        "as many parts are held in memory; does not change the output")
    shards: int = flag(1, bounds=POSITIVE, chart="shards", per_pod=SPAWNED_IS_ONE_POD,
                       help="generator pods that make the epochs together, each its own slices of users "
                            "(DESIGN.md 'Past one pod'); the same for every pod of a run; does not change the output")
    shard: int = flag(default_factory=job_completion_index, bounds=NON_NEGATIVE,
                      default_text="$JOB_COMPLETION_INDEX (an Indexed Job's pod index), else 0",
                      not_in_chart="the generator's Indexed Job gives each pod JOB_COMPLETION_INDEX",
                      per_pod=SPAWNED_IS_ONE_POD,
                      help="which of the --shards pods this is: it makes the slices s with s mod shards = shard")
