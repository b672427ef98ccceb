"""Benchmark: a synthetic-20m training epoch sampled, shuffled and written to local disk.

    python bench/generator.py [--workers 2] [--num-neg 4] [--epochs 2] [--dir /tmp]

Writes --epochs epochs (each deleted once timed) with one EpochWriter, as the Job does.
The first epoch also pays for first touching the shared buffer and the page cache;
`seconds` is the last epoch (the steady state of a run), `first_epoch_seconds` the first.
Compares with a floor measured in the same run on the same disk (best of two): drawing
as many random item ids with numpy (one process) plus writing as many bytes, in as many
files. Prints examples/s, the ratio to that floor and the peak RSS of this process plus
its largest child (resource.getrusage), and as its last line one JSON object.

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
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generator.datasets import prepare  # noqa: E402
from generator.sampling import EpochWriter  # noqa: E402
from protocol import DatasetSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-neg", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2, help="epochs to write (default 2)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write (a temp folder inside)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "ncf-bench-cache"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench %(message)s", datefmt="%H:%M:%S")

    dataset = prepare(DatasetSpec(name="synthetic-20m"), args.cache_dir)
    scratch = Path(tempfile.mkdtemp(prefix="ncf-bench-", dir=args.dir))
    try:
        times = []
        with EpochWriter(dataset, seed=0, num_neg=args.num_neg, workers=args.workers) as writer:
            for epoch in range(args.epochs):
                started = time.perf_counter()
                listing = writer.write(epoch, str(scratch / "epoch"))
                times.append(time.perf_counter() - started)
                shutil.rmtree(scratch / "epoch")
        seconds = times[-1]
        examples = sum(p.num_examples for p in listing)
        floor_seconds = min(measure_floor(examples, dataset.num_items, [p.size for p in listing], scratch / "floor")
                            for _ in range(2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    peak_rss_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                   + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    result = {
        "examples": examples,
        "parts": len(listing),
        "bytes": sum(p.size for p in listing),
        "workers": args.workers,
        "seconds": round(seconds, 3),
        "first_epoch_seconds": round(times[0], 3),
        "examples_per_s": round(examples / seconds),
        "floor_seconds": round(floor_seconds, 3),
        "ratio_to_floor": round(seconds / floor_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb),
    }
    print(f"{examples:,} examples per epoch; epochs took {', '.join(f'{t:.2f}' for t in times)} s; "
          f"last: {examples / seconds / 1e6:.1f} M examples/s with {args.workers} workers; floor "
          f"{floor_seconds:.2f} s (ratio {result['ratio_to_floor']}); "
          f"peak RSS {peak_rss_mb:.0f} MB (self + largest child)")
    print(json.dumps(result))


def measure_floor(examples: int, num_items: int, sizes: list[int], folder: Path) -> float:
    """Seconds to draw `examples` random item ids and to write files of these sizes."""
    shutil.rmtree(folder, ignore_errors=True)
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
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
