"""Benchmark: a synthetic-20m training epoch sampled, shuffled and written to local disk, against its floor.

    python bench/epoch_writer.py [--workers 2] [--num-neg 4] [--epochs 9] [--cli-epochs 8] [--dir /tmp]

The floor (measure_floor) is the least work an epoch can cost: drawing as many random item
ids as it has examples, with numpy's fastest draw (uint32) on one thread, plus writing as
many bytes, in as many files, into the same file system. The generator cannot skip either:
every negative is a random item id (positives and the shuffle add draws of their own), and
every byte of the parts goes through the page cache. Everything else (rejecting rated items,
the two-stage shuffle, unpacking into columns, the checksum) is the generator's own cost,
which is what the ratio shows: how close `--workers` threads come to one thread's least work.

Both sides are timed in the same conditions, one round at a time (--epochs - 1 rounds after
a first epoch that also pays for first touching the buffer and the page cache,
`first_epoch_seconds`):
- the disk: before each timed run, os.sync() (outside the time) writes back whatever is
  dirty, so neither side inherits the other's (or another process's) write-back; both write
  into the page cache of the same folder, and delete their files after the timing, long
  before the kernel would write them back;
- the machine: the rounds alternate which side goes first (ABBA), so a trend in the load of
  a shared machine weighs on both alike. `ratio_to_floor` is the median over rounds of the
  epoch's time over the floor's time in the same round (a busy moment slows both of a
  round); `seconds` and `floor_seconds` are medians, `best_ratio` the best epoch over the
  best floor. `cpu_ratio` is the CPU time of the epoch (all threads) over the floor's, the
  work done whatever the scheduler gave: on a loaded machine the wall ratio tends to it, on
  idle cores the workers run in parallel and take it below.

Then a lone `ncf-generator` process (the CLI, as a Job runs it: heartbeats, ready.json,
buffer polls) writes --cli-epochs epochs of the same dataset into a local run directory;
each epoch is deleted once ready, as the trainer does. `cli_seconds_per_epoch` is the median
time between two consecutive epochs' ready.json, seen from outside (`cli_best_seconds` the
shortest); `cli_ratio_to_floor` is that over the median floor of this run (`cli_floor_seconds`:
the rounds' floors and as many more as the process gave gaps, measured right after it ends,
settled as above: the floor around the time the process ran). It also pays for this process
deleting each epoch (the trainer's share, 0.05-0.2 s of a core per epoch here) on the same
cores, which the in-process figure and the floor do not.

Also prints examples/s, the peak RSS and the machine's load before and after (load average,
CPU pressure: on a shared machine, what the figures were measured under); as its last
line, one JSON object. The dataset comes from the preprocessing cache (default:
<tmp>/ncf-bench-cache); on a cold cache it is generated first (about 10 s), which then also
shows in the peak RSS.
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
from collections.abc import Callable
from dataclasses import dataclass
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
    parser.add_argument("--epochs", type=int, default=9, help="epochs to write: the first, then one per round (>= 2)")
    parser.add_argument("--cli-epochs", type=int, default=8, help="epochs the ncf-generator process writes (>= 2)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write (a temp folder inside)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "ncf-bench-cache"))
    args = parser.parse_args()
    if min(args.epochs, args.cli_epochs) < 2:
        parser.error("--epochs, --cli-epochs: expected at least 2 (the first epoch is not the steady state)")
    return args


@dataclass(frozen=True)
class Timing:
    seconds: float
    cpu_seconds: float  # of every thread of this process


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench %(message)s", datefmt="%H:%M:%S")
    load_before = machine_load()
    dataset = prepare(DatasetSpec(name="synthetic-20m"), args.cache_dir)
    scratch = Path(tempfile.mkdtemp(prefix="ncf-bench-", dir=args.dir))
    try:
        first, rounds, listing = measure_writer(dataset, args, scratch)
        cli_gaps = measure_cli(args, scratch / "run")
        floor = floor_like(listing, dataset.num_items, scratch / "floor")
        cli_floors = [settled(floor, scratch / "floor").seconds for _ in cli_gaps]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(args, first, rounds, listing, cli_gaps, cli_floors, (load_before, machine_load()))


def measure_writer(dataset, args, scratch: Path) -> tuple[Timing, list[tuple[Timing, Timing]], list[PartInfo]]:
    """One EpochWriter's first epoch, then rounds of (its next epoch, the floor), alternating
    which goes first, each settled."""
    listings, rounds = [], []
    with EpochWriter(dataset, seed=0, num_neg=args.num_neg, workers=args.workers) as writer:
        def ours(epoch: int) -> Timing:
            return settled(lambda: listings.append(writer.write(epoch, str(scratch / "epoch"))), scratch / "epoch")

        first = ours(0)
        floor = floor_like(listings[0], dataset.num_items, scratch / "floor")
        for epoch in range(1, args.epochs):
            if epoch % 2:  # ABBA: the side that goes first alternates
                mine = ours(epoch)
                base = settled(floor, scratch / "floor")
            else:
                base = settled(floor, scratch / "floor")
                mine = ours(epoch)
            rounds.append((mine, base))
    return first, rounds, listings[0]


def measure_cli(args, run: Path) -> list[float]:
    """Seconds between consecutive epochs' ready.json of a lone ncf-generator. Each epoch is
    deleted once ready, as the trainer does once it has read it (and as the in-process
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
    return [b - a for a, b in zip(ready, ready[1:])]


def report(args, first: Timing, rounds: list[tuple[Timing, Timing]], listing: list[PartInfo], cli_gaps: list[float],
           cli_floors: list[float], load: tuple[dict, dict]) -> None:
    examples = sum(p.num_examples for p in listing)
    times, floors = [o.seconds for o, _ in rounds], [f.seconds for _, f in rounds]
    median = statistics.median
    cli_seconds, cli_floor = median(cli_gaps), median(floors + cli_floors)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "examples": examples,
        "parts": len(listing),
        "bytes": sum(p.size for p in listing),
        "workers": args.workers,
        "rounds": len(rounds),
        "seconds": round(median(times), 3),
        "best_seconds": round(min(times), 3),
        "first_epoch_seconds": round(first.seconds, 3),
        "examples_per_s": round(examples / median(times)),
        "floor_seconds": round(median(floors), 3),
        "ratio_to_floor": round(median([o.seconds / f.seconds for o, f in rounds]), 2),
        "best_ratio": round(min(times) / min(floors), 2),
        "cpu_ratio": round(median([o.cpu_seconds for o, _ in rounds]) / median([f.cpu_seconds for _, f in rounds]), 2),
        "peak_rss_mb": round(peak_rss_mb),
        "cli_seconds_per_epoch": round(cli_seconds, 3),
        "cli_best_seconds": round(min(cli_gaps), 3),
        "cli_examples_per_s": round(examples / cli_seconds),
        "cli_floor_seconds": round(cli_floor, 3),
        "cli_ratio_to_floor": round(cli_seconds / cli_floor, 2),
        "load": list(load),
    }
    print(f"{examples:,} examples per epoch with {args.workers} workers; first epoch {first.seconds:.2f} s; "
          f"rounds (epoch/floor, s): {', '.join(f'{o.seconds:.2f}/{f.seconds:.2f}' for o, f in rounds)}")
    print(f"median {examples / median(times) / 1e6:.1f} M examples/s, {result['ratio_to_floor']}x the floor "
          f"(best over best {result['best_ratio']}x, CPU time {result['cpu_ratio']}x); peak RSS {peak_rss_mb:.0f} MB; "
          f"lone ncf-generator: gaps {', '.join(f'{g:.2f}' for g in cli_gaps)} s, floors after it "
          f"{', '.join(f'{f:.2f}' for f in cli_floors)} s: {result['cli_ratio_to_floor']}x; load {load[0]} then {load[1]}")
    print(json.dumps(result))


def settled(work: Callable[[], object], folder: Path) -> Timing:
    """work() timed after os.sync() (outside the time: no write-back left over from before
    weighs on it), then its files (in folder) deleted."""
    os.sync()
    cpu, started = _cpu_seconds(), time.perf_counter()
    work()
    timing = Timing(time.perf_counter() - started, _cpu_seconds() - cpu)
    shutil.rmtree(folder)
    return timing


def floor_work(examples: int, num_items: int, sizes: list[int], folder: Path) -> Callable[[], None]:
    """The floor's work: draw `examples` random item ids and write files of these sizes into folder."""
    payload = bytes(max(sizes))

    def work() -> None:
        folder.mkdir()
        rng = np.random.default_rng(0)
        block = 1 << 23
        for start in range(0, examples, block):
            rng.integers(0, num_items, min(block, examples - start), dtype=np.uint32)  # numpy's fastest draw
        for index, size in enumerate(sizes):
            with open(folder / f"part-{index:05d}", "wb") as f:
                f.write(memoryview(payload)[:size])
    return work


def floor_like(listing: list[PartInfo], num_items: int, folder: Path) -> Callable[[], None]:
    """The floor's work for an epoch of these parts."""
    return floor_work(sum(p.num_examples for p in listing), num_items, [p.size for p in listing], folder)


def measure_floor(examples: int, num_items: int, sizes: list[int], folder: Path) -> float:
    """Seconds of the floor's work, settled (then deleted)."""
    return settled(floor_work(examples, num_items, sizes, folder), folder).seconds


def machine_load() -> dict:
    """How busy the shared machine is: the 1-minute load average and, where the kernel has PSI,
    the share of the last 10 s in which some task waited for a CPU (%)."""
    load = {"load_average": round(os.getloadavg()[0], 2)}
    try:
        with open("/proc/pressure/cpu") as f:
            load["cpu_pressure"] = float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return load


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
