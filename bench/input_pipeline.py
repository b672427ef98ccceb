"""Input pipeline throughput: local parts -> verified columns -> model-ready tf.data batches.

Writes ~10M synthetic training examples as parts with protocol.parts (as the generator
does), then measures, in the same run:
  raw:      open/read the same part files (the floor: bytes from the page cache);
  pipeline: trainer.data.read_epoch (read + size/CRC32C check + decode + concatenate)
            and pulling every block of batches of trainer.data.blocks (batch 65536 and
            2048, the trainer's default steps per block) in a tf.function, as the
            trainer's compiled train call receives them.
Last line: one JSON object of the figures.

    python bench/input_pipeline.py [--examples 10000000] [--parts 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


import numpy as np

from protocol import Ready, RunDir, parts, storage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=10_000_000)
    p.add_argument("--parts", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-sizes", default="65536,2048")
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from trainer import data
    from trainer.config import Config

    steps = Config.steps_per_execution  # batches per block, as the trainer's default

    with tempfile.TemporaryDirectory(prefix="ncf-bench-") as tmp:
        run = RunDir(tmp)
        rng = np.random.default_rng(0)
        n = args.examples
        columns = {"user": rng.integers(0, 138_493, n, dtype=np.uint32),
                   "item": rng.integers(0, 26_744, n).astype(parts.id_dtype(26_744)),
                   "label": (rng.random(n) < 0.2).astype(np.uint8)}
        folder = run.epoch_dir(0)
        infos = [parts.write(storage.join(folder, RunDir.part_name(i)), {k: v[idx] for k, v in columns.items()})
                 for i, idx in enumerate(np.array_split(np.arange(n), args.parts))]
        storage.publish_once(RunDir.ready(folder), Ready(run_id="bench", kind="train", epoch=0, num_examples=n,
                                                         parts=infos))
        total_bytes = sum(i.size for i in infos)

        @tf.function
        def consume(dataset):
            # Iterates in the graph: what is measured is tf.data handing over whole blocks,
            # not Python's loop overhead.
            return dataset.reduce(tf.constant(0, tf.int64),
                                  lambda count, block: count + tf.size(block[1], out_type=tf.int64))

        def raw() -> float:
            began = time.perf_counter()
            for info in infos:
                with open(os.path.join(folder, info.name), "rb") as f:
                    f.read()
            return time.perf_counter() - began

        def pipeline(batch_size: int) -> tuple[float, float]:
            began = time.perf_counter()
            epoch = data.read_epoch(run, 0, "bench")
            read_s = time.perf_counter() - began
            seen = int(consume(data.blocks(epoch.user, epoch.item, epoch.label, batch_size, steps)))
            assert seen == n, seen
            return time.perf_counter() - began, read_s

        raw()  # warm the page cache
        raw_s = min(raw() for _ in range(args.repeats))
        figures = {"examples": n, "bytes": total_bytes, "raw_read_s": round(raw_s, 4),
                   "raw_examples_per_s": round(n / raw_s)}
        print(f"raw read: {total_bytes / 1e6:.0f} MB in {raw_s:.3f} s = {n / raw_s / 1e6:.0f}M examples/s", flush=True)
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            pipeline(batch_size)  # warm-up (tf.data graph building)
            runs = [pipeline(batch_size) for _ in range(args.repeats)]
            best, read_s = min(runs)
            rate = n / best
            figures[f"batch_{batch_size}"] = {"seconds": round(best, 4), "read_verify_s": round(read_s, 4),
                                              "examples_per_s": round(rate), "ratio_to_raw": round(raw_s / best, 3)}
            print(f"batch {batch_size}: {best:.3f} s ({read_s:.3f} s read+verify) = {rate / 1e6:.1f}M examples/s, "
                  f"{raw_s / best:.2f} x raw read speed", flush=True)
        figures["examples_per_s"] = min(v["examples_per_s"] for k, v in figures.items() if k.startswith("batch_"))
        figures["ratio_to_raw"] = min(v["ratio_to_raw"] for k, v in figures.items() if k.startswith("batch_"))
        figures["steps_per_block"] = steps
        figures["target_examples_per_s"] = 50_000_000
        figures["tensorflow"] = tf.__version__
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
