"""Benchmark: decoding training parts from local disk, against reading the same bytes raw.

Writes 10M ml-20m-shaped examples as parts, then times (best of --rounds, page cache warm)
reading + verifying (size, CRC32C) + decoding them with protocol.parts, and plain
open().read() of the same files. Target: >= 100M examples/s on one core.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from protocol import parts

NUM_USERS, NUM_ITEMS = 138_493, 26_744


def write_parts(folder: Path, examples: int, per_part: int) -> list:
    rng = np.random.default_rng(0)
    infos = []
    for index, start in enumerate(range(0, examples, per_part)):
        n = min(per_part, examples - start)
        columns = {
            "user": rng.integers(0, NUM_USERS, n).astype(parts.id_dtype(NUM_USERS)),
            "item": rng.integers(0, NUM_ITEMS, n).astype(parts.id_dtype(NUM_ITEMS)),
            "label": (rng.random(n) < 0.2).astype(np.uint8),
        }
        infos.append(parts.write(str(folder / f"part-{index:05d}"), columns))
    return infos


def best_time(function, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=10_000_000)
    parser.add_argument("--per-part", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-parts-") as tmp:
        infos = write_parts(Path(tmp), args.examples, args.per_part)
        raw_s, decode_s = measure(Path(tmp), infos, args)
    report(args, sum(i.size for i in infos), raw_s, decode_s)


def measure(folder: Path, infos: list, args) -> tuple[float, float]:
    """Best seconds to read the parts' bytes raw, and to read, verify and decode them."""
    def decode_all():
        count = 0
        for info in infos:
            count += len(parts.read(str(folder / info.name), info)["label"])
        assert count == args.examples

    def read_raw():
        for info in infos:
            with open(folder / info.name, "rb") as f:
                f.read()

    read_raw()  # warm the page cache for both
    return best_time(read_raw, args.rounds), best_time(decode_all, args.rounds)


def report(args, total_bytes: int, raw_s: float, decode_s: float) -> None:
    figures = {
        "examples": args.examples,
        "bytes": total_bytes,
        "bytes_per_example": round(total_bytes / args.examples, 2),
        "decode_seconds": round(decode_s, 4),
        "raw_read_seconds": round(raw_s, 4),
        "examples_per_s": round(args.examples / decode_s),
        "raw_examples_per_s": round(args.examples / raw_s),
        "ratio_to_raw": round(decode_s / raw_s, 3),
        "target_examples_per_s": 100_000_000,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(f"decode+verify {args.examples / decode_s / 1e6:.0f}M examples/s "
          f"({total_bytes / decode_s / 1e9:.2f} GB/s); raw read {args.examples / raw_s / 1e6:.0f}M examples/s; "
          f"ratio to raw {decode_s / raw_s:.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
