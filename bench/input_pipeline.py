"""Input pipeline throughput: local parts -> verified columns -> model-ready tf.data batches.

Writes ~10M synthetic training examples as parts with protocol.parts (as the generator
does), then measures, in the same run:
  raw:      open/read the same part files (the floor: bytes from the page cache);
  cold:     the first epoch of a fresh process (a subprocess per batch size and repeat, the part
            files in the page cache, the best of --repeats processes as for warm): trainer.data.read_epoch
            (read + size/CRC32C check + decode + concatenate) and pulling every block of batches of
            trainer.data.blocks in a tf.function, as the trainer's compiled train call receives them,
            paying first allocations and page faults, as a trainer's first epoch does. The process's
            one-off startup before that (TensorFlow's eager context and tf.data runtime, the first
            bucket access, tracing the consuming tf.function: what a trainer pays once, before its
            first epoch, whatever the epoch's size) is timed apart from it, on a tiny epoch: startup_s;
  warm:     the same, repeated in this process after a warm-up (batch 65536 and 2048, the
            trainer's default steps per block).
Last line: one JSON object of the figures.

    python bench/input_pipeline.py [--examples 10000000] [--parts 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from protocol import Ready, RunDir, parts, storage

COLD_TARGET = 60_000_000  # examples/s on a 16-core host (issue 20)
WARM_TARGET = 50_000_000
RUN_ID = "bench"
ID_DTYPES = (np.dtype(np.uint32), parts.id_dtype(26_744))  # ml-20m's users and items


def write_epoch(run: RunDir, n: int, num_parts: int) -> list[parts.PartInfo]:
    """n random examples of the ml-20m id ranges as epoch 0's parts and ready.json."""
    rng = np.random.default_rng(0)
    columns = {"user": rng.integers(0, 138_493, n, dtype=ID_DTYPES[0]),
               "item": rng.integers(0, 26_744, n).astype(ID_DTYPES[1]),
               "label": (rng.random(n) < 0.2).astype(np.uint8)}
    folder = run.epoch_dir(0)
    infos = [parts.write(storage.join(folder, RunDir.part_name(i)), {k: v[idx] for k, v in columns.items()})
             for i, idx in enumerate(np.array_split(np.arange(n), num_parts))]
    storage.publish_once(RunDir.ready(folder), Ready(run_id=RUN_ID, kind="train", epoch=0, num_examples=n,
                                                     parts=infos))
    return infos


def pipeline(run: RunDir, batch_size: int, consume) -> tuple[float, float]:
    """(seconds for the whole epoch, seconds of read + verify) through trainer.data."""
    from trainer import data
    from trainer.config import Config

    began = time.perf_counter()
    epoch = data.read_epoch(run, 0, RUN_ID)
    read_s = time.perf_counter() - began
    seen = int(consume(data.blocks(epoch.user, epoch.item, epoch.label, batch_size, Config.steps_per_execution)))
    assert seen == epoch.num_examples, seen
    return time.perf_counter() - began, read_s


def consumer():
    import tensorflow as tf

    blocks = tf.data.DatasetSpec(((tf.TensorSpec([None, None], ID_DTYPES[0]), tf.TensorSpec([None, None], ID_DTYPES[1])),
                                  tf.TensorSpec([None, None], tf.uint8)))

    # One signature for every epoch's shapes: traced once, by startup(), not again on the timed epoch.
    @tf.function(input_signature=[blocks])
    def consume(dataset):
        # Iterates in the graph: what is measured is tf.data handing over whole blocks,
        # not Python's loop overhead.
        return dataset.reduce(tf.constant(0, tf.int64), lambda count, block: count + tf.size(block[1], out_type=tf.int64))

    return consume


def startup(run: RunDir, consume) -> float:
    """Seconds of a fresh process's one-off costs, paid on a tiny epoch of the same dtypes: the
    first bucket access (ready.json), TensorFlow's first tensors and tf.data pipeline, and the
    trace of `consume`."""
    from trainer import data

    began = time.perf_counter()
    data.read_ready(run.epoch_dir(0), RUN_ID, "train", 0)
    ids = [np.zeros(64, dtype) for dtype in ID_DTYPES]
    assert int(consume(data.blocks(*ids, np.zeros(64, np.uint8), 8, 2))) == 64
    return time.perf_counter() - began


def cold(folder: str, batch_size: int, repeats: int) -> dict:
    """The first epoch of a fresh Python process (TensorFlow imported before the clock starts,
    startup timed apart), the fastest of `repeats` processes."""
    def first_epoch() -> dict:
        out = subprocess.run([sys.executable, __file__, "--cold-run", folder, "--batch-sizes", str(batch_size)],
                             check=True, capture_output=True, text=True, timeout=900).stdout
        return json.loads(out.strip().splitlines()[-1])
    return min((first_epoch() for _ in range(repeats)), key=lambda run: run["seconds"])


def figures(seconds: float, read_s: float, n: int, raw_s: float) -> dict:
    return {"seconds": round(seconds, 4), "read_verify_s": round(read_s, 4), "examples_per_s": round(n / seconds),
            "ratio_to_raw": round(raw_s / seconds, 3)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=10_000_000)
    p.add_argument("--parts", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-sizes", default="65536,2048")
    p.add_argument("--cold-run", metavar="RUN_DIR", help=argparse.SUPPRESS)  # the subprocess of `cold`
    return p.parse_args()


def cold_run(folder: str, batch_size: int) -> None:
    """The subprocess of `cold`: startup, then the first epoch, as one JSON line."""
    run, consume = RunDir(folder), consumer()
    startup_s = startup(run, consume)
    seconds, read_s = pipeline(run, batch_size, consume)
    print(json.dumps({"seconds": seconds, "read_verify_s": read_s, "startup_s": startup_s}))


def raw_read(folder: str, infos: list[parts.PartInfo], repeats: int) -> float:
    """Seconds to read the epoch's files raw, best of `repeats` after one that warms the page cache."""
    def once() -> float:
        began = time.perf_counter()
        for info in infos:
            with open(os.path.join(folder, info.name), "rb") as f:
                f.read()
        return time.perf_counter() - began

    once()
    return min(once() for _ in range(repeats))


def measure_batch(run: RunDir, batch_size: int, n: int, raw_s: float, consume, repeats: int) -> tuple[dict, dict]:
    """(cold, warm) figures at one batch size: cold in fresh processes, warm here."""
    first = cold(run.url, batch_size, repeats)
    cold_figures = figures(first["seconds"], first["read_verify_s"], n, raw_s) | {
        "startup_s": round(first["startup_s"], 4),
        "with_startup_examples_per_s": round(n / (first["startup_s"] + first["seconds"]))}
    pipeline(run, batch_size, consume)  # warm-up (tf.data graph building)
    best, read_s = min(pipeline(run, batch_size, consume) for _ in range(repeats))
    print(f"batch {batch_size}: startup {first['startup_s']:.3f} s, then cold {first['seconds']:.3f} s = "
          f"{n / first['seconds'] / 1e6:.1f}M examples/s; "
          f"warm {best:.3f} s ({read_s:.3f} s read+verify) = {n / best / 1e6:.1f}M examples/s, "
          f"{raw_s / best:.2f} x raw read speed", flush=True)
    return cold_figures, figures(best, read_s, n, raw_s)


def summarize(result: dict, batch_sizes: list[int], tf_version: str) -> dict:
    from trainer.config import Config

    warm = [result[f"batch_{b}"] for b in batch_sizes]
    cold_runs = [result[f"cold_batch_{b}"] for b in batch_sizes]
    result["examples_per_s"] = min(f["examples_per_s"] for f in warm)
    result["ratio_to_raw"] = min(f["ratio_to_raw"] for f in warm)
    result["cold_examples_per_s"] = min(f["examples_per_s"] for f in cold_runs)
    result["cold_to_warm"] = round(result["cold_examples_per_s"] / result["examples_per_s"], 3)
    result["cold_startup_s"] = max(f["startup_s"] for f in cold_runs)
    return result | {"steps_per_block": Config.steps_per_execution, "target_examples_per_s": WARM_TARGET,
                     "cold_target_examples_per_s": COLD_TARGET, "cpus": os.cpu_count(), "tensorflow": tf_version}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.cold_run:
        cold_run(args.cold_run, batch_sizes[0])
        return
    with tempfile.TemporaryDirectory(prefix="ncf-bench-") as tmp:
        run, n = RunDir(tmp), args.examples
        infos = write_epoch(run, n, args.parts)
        raw_s = raw_read(run.epoch_dir(0), infos, args.repeats)
        result = {"examples": n, "bytes": sum(i.size for i in infos), "raw_read_s": round(raw_s, 4),
                  "raw_examples_per_s": round(n / raw_s)}
        print(f"raw read: {result['bytes'] / 1e6:.0f} MB in {raw_s:.3f} s = {n / raw_s / 1e6:.0f}M examples/s",
              flush=True)
        consume = consumer()
        for batch_size in batch_sizes:
            result[f"cold_batch_{batch_size}"], result[f"batch_{batch_size}"] = measure_batch(
                run, batch_size, n, raw_s, consume, args.repeats)
        result = summarize(result, batch_sizes, tf.__version__)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
