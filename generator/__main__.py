"""ncf-generator: the CPU Job that writes eval data and training epochs for the trainer."""

from __future__ import annotations

import argparse
import math
import os
import sys

from protocol import cli
from protocol.defaults import HEARTBEAT_INTERVAL_S, PEER_TIMEOUT_S, START_TIMEOUT_S

from .job import Options, generate
from .sampling import DEFAULT_PART_EXAMPLES, DEFAULT_UPLOAD_CONCURRENCY

# cgroup v2: "<quota> <period>" in microseconds, or "max <period>". A pod's limits.cpu shows
# only here: the CPUs a container sees (affinity) are the node's.
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="ncf-generator",
        description="Waits for the trainer's command.json in the run directory, then writes the "
                    "dataset metadata, the eval data and every training epoch (DESIGN.md).",
    )
    parser.add_argument("--data-dir", required=True, help="run directory: a local path or gs://bucket/prefix")
    parser.add_argument("--workers", type=_positive(int), default=usable_cpus(),
                        help="worker threads for sampling and writing (default: the CPUs this container may "
                             "use, %(default)s here); does not change the output")
    parser.add_argument("--start-timeout", type=_positive(float), default=START_TIMEOUT_S,
                        help="seconds to wait for command.json and the trainer's first heartbeat (default %(default)s)")
    parser.add_argument("--peer-timeout", type=_positive(float), default=PEER_TIMEOUT_S,
                        help="seconds the trainer's heartbeat may stay unchanged before giving up (default %(default)s)")
    parser.add_argument("--heartbeat-interval", type=_positive(float), default=HEARTBEAT_INTERVAL_S,
                        help="seconds between rewrites of status/generator.json (default %(default)s)")
    parser.add_argument("--cache-dir", default=None,
                        help="where preprocessed datasets are cached, local or gs:// "
                             "(default: ncf-cache next to the run directory)")
    parser.add_argument("--part-examples", type=_positive(int), default=DEFAULT_PART_EXAMPLES,
                        help="training examples per part file (default %(default)s); it is part of an "
                             "epoch's byte layout, so keep it fixed across restarts of one run")
    parser.add_argument("--upload-concurrency", type=_positive(int), default=DEFAULT_UPLOAD_CONCURRENCY,
                        help="part uploads in flight (default %(default)s, measured with bench/bucket.py); at most "
                             "twice as many parts are held in memory; does not change the output")
    args = parser.parse_args(argv)
    return Options(data_dir=args.data_dir, workers=args.workers, start_timeout=args.start_timeout,
                   peer_timeout=args.peer_timeout, heartbeat_interval=args.heartbeat_interval,
                   cache_dir=args.cache_dir, part_examples=args.part_examples,
                   upload_concurrency=args.upload_concurrency)


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


def _positive(kind):
    def convert(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
        return value
    convert.__name__ = kind.__name__
    return convert


def main(argv: list[str] | None = None) -> None:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    cli.run("generator", lambda: generate(options))


if __name__ == "__main__":
    main()
