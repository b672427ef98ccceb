"""Training throughput of the ml-20m MLPerf model size (NeuMF: 138,493 users, 26,744 items,
mf_dim 64, layers 256,256,128,64; Adam) at batch 2048 and 65536, through the trainer's own
model, optimizer settings, input blocks and epoch loop (trainer.data.blocks +
trainer.model.epoch_trainer, the trainer's default steps per block).

With a GPU present it also measures --mixed-precision and --xla together and compares
with NVIDIA's published 34M samples/s on one A100 (AMP). Last line: one JSON object.

    python bench/train_step.py [--batch-sizes 2048,65536] [--seconds 20] [--mixed-precision] [--xla]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

A100_SAMPLES_PER_S = 34e6  # NVIDIA, MLPerf v0.5 NCF, one A100, AMP
NUM_USERS, NUM_ITEMS, MF_DIM, LAYERS = 138_493, 26_744, 64, [256, 256, 128, 64]
# Host arrays of one timed run stay under this many examples (batch 1,048,576: 128 steps).
MAX_EXAMPLES = 1 << 27


def time_epoch(train_epoch, dataset, block: int, batch_size: int, seconds: float) -> tuple[int, float, float]:
    """(steps, seconds, warm-up seconds) of one timed run of about `seconds`, after the compiling one."""
    began = time.perf_counter()
    train_epoch(dataset(block))  # compile + warm-up
    warmup_s = time.perf_counter() - began
    # Size the timed run from one more short measurement, to last about `seconds`.
    began = time.perf_counter()
    train_epoch(dataset(block))
    per_step = (time.perf_counter() - began) / block
    steps = max(block, min(int(seconds / per_step), MAX_EXAMPLES // batch_size) // block * block)
    ds = dataset(steps)
    began = time.perf_counter()
    train_epoch(ds)
    return steps, time.perf_counter() - began, warmup_s


def measure(batch_size: int, mixed: bool, xla: bool, seconds: float,
            dims: tuple = (NUM_USERS, NUM_ITEMS, MF_DIM, LAYERS)) -> dict:
    """Examples/s of the trainer's epoch loop on random ids; dims: (users, items, mf_dim, layers)."""
    import keras

    from trainer import data, strategy
    from trainer.config import Config
    from trainer.model import build_neumf, compile_neumf, epoch_trainer

    num_users, num_items, mf_dim, layers = dims
    keras.backend.clear_session()
    choice, distribution = strategy.setup(mixed)
    with distribution.scope():
        model = compile_neumf(build_neumf(num_users, num_items, mf_dim, layers), 0.0005, xla)
    train_epoch = epoch_trainer(model, distribution, xla)
    block = Config.steps_per_execution
    rng = np.random.default_rng(0)

    def dataset(steps: int):
        n = steps * batch_size
        return data.blocks(rng.integers(0, num_users, n, dtype=np.uint32),
                            rng.integers(0, num_items, n).astype(np.uint16),
                            (rng.random(n) < 0.2).astype(np.uint8), batch_size, block,
                           cast_ids=choice.kind == "tpu")

    steps, elapsed, warmup_s = time_epoch(train_epoch, dataset, block, batch_size, seconds)
    rate = steps * batch_size / elapsed
    return {"batch_size": batch_size, "hardware": choice.kind, "precision": choice.precision, "xla": xla,
            "steps": steps, "seconds": round(elapsed, 3), "warmup_s": round(warmup_s, 2),
            "examples_per_s": round(rate), "ratio_to_a100": round(rate / A100_SAMPLES_PER_S, 5)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="2048,65536")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per configuration")
    p.add_argument("--mixed-precision", action="store_true", help="only the mixed-precision (+ --xla) variant")
    p.add_argument("--xla", action="store_true")
    args = p.parse_args()
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    variants = [(args.mixed_precision, args.xla)]
    if gpu and not (args.mixed_precision or args.xla):
        variants.append((True, True))  # the accelerator's fast path
    results = []
    for mixed, xla in variants:
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            r = measure(batch_size, mixed, xla, args.seconds)
            results.append(r)
            print(f"batch {batch_size} on {r['hardware']} ({r['precision']}, xla {xla}): "
                  f"{r['examples_per_s'] / 1e6:.3f}M examples/s = {r['ratio_to_a100']:.4f} x NVIDIA's 34M/s on "
                  f"one A100", flush=True)
    best = max(results, key=lambda r: r["examples_per_s"])
    print(json.dumps({"model": {"num_users": NUM_USERS, "num_items": NUM_ITEMS, "mf_dim": MF_DIM, "layers": LAYERS},
                      "device": "gpu" if gpu else "cpu", "results": results,
                      "examples_per_s": best["examples_per_s"], "ratio_to_a100": best["ratio_to_a100"],
                      "a100_reference_examples_per_s": A100_SAMPLES_PER_S, "tensorflow": tf.__version__}))


if __name__ == "__main__":
    main()
