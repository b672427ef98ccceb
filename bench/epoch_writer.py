"""Benchmark: a synthetic-20m training epoch sampled, shuffled and written to local disk.

    python bench/epoch_writer.py [--workers 2] [--num-neg 4] [--epochs 8] [--cli-epochs 5] [--dir /tmp]

Writes --epochs epochs (each deleted once timed) with one EpochWriter, as the Job does.
The first epoch also pays for first touching the buffer and the page cache (
`first_epoch_seconds`); the others are the steady state of a run. After each of them
the floor is measured on the same disk: drawing as many random item ids with numpy (one
thread) plus writing as many bytes, in as many files. `ratio_to_floor` is the best
steady epoch over the best floor: on a shared machine both sides get slowed down at
random (here, mostly by page-cache writes landing on memory the host hands back
lazily), and the best of several runs is the figure that noise leaves alone.
`seconds` and `median_ratio` are the medians, for comparison. Also prints examples/s
and the peak RSS, and as its last line one JSON object.

Then a lone `ncf-generator` process (the CLI, as a Job runs it: heartbeats, ready.json,
buffer polls) writes --cli-epochs epochs of the same dataset into a local run directory;
`cli_seconds_per_epoch` is its best steady epoch seen from outside (the shortest time
between two consecutive epochs' ready.json; each epoch deleted once ready, as the trainer
does), `cli_ratio_to_floor` that over the same floor.

The dataset comes from the preprocessing cache (default: <tmp>/ncf-bench-cache); on a
cold cache it is generated first (about 10 s), which then also shows in the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from generator.datasets import prepare
from generator.sampling import EpochWriter
from protocol import DatasetSpec, PartInfo, RunDir, storage
from testkit.builders import command, publish_command


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-neg", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8, help="epochs to write (default 8, at least 2)")
    parser.add_argument("--cli-epochs", type=int, default=5, help="epochs the ncf-generator process writes (>= 2)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write (a temp folder inside)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "ncf-bench-cache"))
    args = parser.parse_args()
    if min(args.epochs, args.cli_epochs) < 2:
        parser.error("--epochs, --cli-epochs: expected at least 2 (the first epoch is not the steady state)")
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench %(message)s", datefmt="%H:%M:%S")
    dataset = prepare(DatasetSpec(name="synthetic-20m"), args.cache_dir)
    scratch = Path(tempfile.mkdtemp(prefix="ncf-bench-", dir=args.dir))
    try:
        times, floor_times, listing = measure_writer(dataset, args, scratch)
        cli_seconds = measure_cli(args, scratch / "run")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(args, times, floor_times, listing, cli_seconds)


def measure_writer(dataset, args, scratch: Path) -> tuple[list[float], list[float], list[PartInfo]]:
    """Seconds per epoch of one EpochWriter, and the floor's seconds after each steady epoch."""
    times, floor_times = [], []
    with EpochWriter(dataset, seed=0, num_neg=args.num_neg, workers=args.workers) as writer:
        for epoch in range(args.epochs):
            started = time.perf_counter()
            listing = writer.write(epoch, str(scratch / "epoch"))
            times.append(time.perf_counter() - started)
            shutil.rmtree(scratch / "epoch")
            if epoch:  # the floor right after each steady epoch: both see the same machine
                floor_times.append(measure_floor(sum(p.num_examples for p in listing), dataset.num_items,
                                                 [p.size for p in listing], scratch / "floor"))
    return times, floor_times, listing


def measure_cli(args, run: Path) -> float:
    """Best steady seconds per epoch of a lone ncf-generator: the shortest time between two
    consecutive epochs' ready.json (best, as for the EpochWriter: noise only ever adds). Each
    epoch is deleted once ready, as the trainer does once it has read it (and as the in-process
    measurement does): dirty pages of epochs kept would slow the disk for the next ones."""
    run.mkdir()
    publish_command(str(run), command("synthetic-20m", epochs=args.cli_epochs, num_neg=args.num_neg,
                                      buffer_epochs=args.cli_epochs))
    generator = subprocess.Popen([sys.executable, "-m", "generator", "--data-dir", str(run), "--cache-dir",
                                  args.cache_dir, "--workers", str(args.workers)])
    ready = []
    for epoch in range(args.cli_epochs):
        folder = Path(RunDir(str(run)).epoch_dir(epoch))
        storage.wait_until(lambda: (folder / "ready.json").exists(), 600, f"epoch {epoch}", max_interval=0.01)
        ready.append(time.monotonic())
        shutil.rmtree(folder)
    if generator.wait(timeout=600) != 0:
        raise RuntimeError(f"ncf-generator exited with {generator.returncode}")
    return min(b - a for a, b in zip(ready, ready[1:]))


def report(args, times: list[float], floor_times: list[float], listing: list[PartInfo], cli_seconds: float) -> None:
    examples, steady, floor = sum(p.num_examples for p in listing), times[1:], min(floor_times)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "examples": examples,
        "parts": len(listing),
        "bytes": sum(p.size for p in listing),
        "workers": args.workers,
        "best_seconds": round(min(steady), 3),
        "seconds": round(statistics.median(steady), 3),
        "first_epoch_seconds": round(times[0], 3),
        "examples_per_s": round(examples / min(steady)),
        "floor_seconds": round(floor, 3),
        "ratio_to_floor": round(min(steady) / floor, 2),
        "median_ratio": round(statistics.median(steady) / statistics.median(floor_times), 2),
        "peak_rss_mb": round(peak_rss_mb),
        "cli_seconds_per_epoch": round(cli_seconds, 3),
        "cli_examples_per_s": round(examples / cli_seconds),
        "cli_ratio_to_floor": round(cli_seconds / floor, 2),
    }
    print(f"{examples:,} examples per epoch with {args.workers} workers; epochs took "
          f"{', '.join(f'{t:.2f}' for t in times)} s; floors {', '.join(f'{t:.2f}' for t in floor_times)} s")
    print(f"best {examples / min(steady) / 1e6:.1f} M examples/s, {result['ratio_to_floor']}x the floor "
          f"(medians: {result['median_ratio']}x); peak RSS {peak_rss_mb:.0f} MB; lone ncf-generator "
          f"{cli_seconds:.2f} s per epoch, {result['cli_ratio_to_floor']}x the floor")
    print(json.dumps(result))


def measure_floor(examples: int, num_items: int, sizes: list[int], folder: Path) -> float:
    """Seconds to draw `examples` random item ids and to write files of these sizes (then deleted)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    block = 1 << 23
    started = time.perf_counter()
    for start in range(0, examples, block):
        rng.integers(0, num_items, min(block, examples - start), dtype=np.uint32)  # numpy's fastest draw
    payload = bytes(max(sizes))
    for index, size in enumerate(sizes):
        with open(folder / f"part-{index:05d}", "wb") as f:
            f.write(memoryview(payload)[:size])
    seconds = time.perf_counter() - started
    shutil.rmtree(folder)
    return seconds


if __name__ == "__main__":
    main()
