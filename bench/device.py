"""The accelerator benchmark (issue 20): what one GPU (or TPU host) does with this trainer.

    python bench/device.py            # on the accelerator machine: under 8 minutes on one GPU
    python bench/device.py --smoke    # the same code on this CPU at tiny sizes, under 2 minutes

Three parts, each in its own process (TensorFlow takes the whole GPU's memory in the
first process that touches it, and a cold input figure needs a fresh process):
  train_step:  examples/s of the trainer's own compiled epoch loop (bench/train_step.measure:
               trainer.model.compile_neumf + epoch_trainer over trainer.data.blocks) at the
               ml-20m MLPerf model size, batch 2048, 65536 and 1,048,576, each in float32,
               mixed precision, and mixed precision + XLA;
  input:       local parts -> tf.data blocks (bench/input_pipeline.py): cold (the first epoch
               of a fresh process) and warm;
  end_to_end:  one synthetic-20m epoch, `ncf-trainer --spawn-generator` (mixed precision +
               XLA, batch 65536): the trainer's own examples/s from metrics.jsonl (the first
               epoch: compilation included), and the wall time (the generator's preprocessing too).
Last line: one JSON object. Baselines measured in the same run: each variant's speed-up
over float32 at the same batch, cold over warm input, and the best train step against the
goal of 30M samples/s on one H100 (NVIDIA publishes 22.8M for TensorFlow AMP on one A100).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
GOAL_EXAMPLES_PER_S = 30e6  # one H100 (issue 20)
VARIANTS = {"float32": (False, False), "mixed": (True, False), "mixed_xla": (True, True)}  # (mixed, xla)
PART_TIMEOUT_S = 600


@dataclass(frozen=True)
class Sizes:
    batches: tuple[int, ...]
    seconds: float  # timed seconds per train-step measurement
    dims: tuple | None  # (users, items, mf_dim, layers); None: the ml-20m MLPerf size
    input_examples: int
    dataset: str  # the end-to-end epoch's
    batch_size: int  # the end-to-end epoch's
    precision_flags: tuple[str, ...]  # the end-to-end epoch's (a CPU compiles XLA for longer than it trains)


FULL = Sizes(batches=(2048, 65536, 1_048_576), seconds=5.0, dims=None, input_examples=20_000_000,
             dataset="synthetic-20m", batch_size=65536, precision_flags=("--mixed-precision", "--xla"))
SMOKE = Sizes(batches=(256, 1024, 4096), seconds=0.1, dims=(1000, 500, 8, [16, 8]), input_examples=200_000,
              dataset="synthetic-small", batch_size=4096, precision_flags=())


def last_json(command: list[str], env: dict | None = None) -> dict:
    """Runs a part and returns the JSON object its last line prints."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=PART_TIMEOUT_S,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"device bench: {' '.join(command[:3])} exited {done.returncode}: "
                         f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_steps(sizes: Sizes) -> dict:
    """In this (child) process: every variant at every batch size."""
    import tensorflow as tf
    from train_step import measure  # bench/train_step.py, beside this file

    gpus = tf.config.list_physical_devices("GPU")
    device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "cpu"
    kwargs = {"dims": sizes.dims} if sizes.dims else {}
    results = {}
    for name, (mixed, xla) in VARIANTS.items():
        results[name] = {str(b): measure(b, mixed, xla, sizes.seconds, **kwargs) for b in sizes.batches}
    return {"device": device, "gpus": len(gpus), "results": results}


def end_to_end(sizes: Sizes) -> dict:
    """One epoch of `sizes.dataset` through ncf-trainer --spawn-generator, in a temporary run directory."""
    with tempfile.TemporaryDirectory(prefix="ncf-device-") as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "trainer", "--data-dir", str(run), "--dataset", sizes.dataset,
                   "--epochs", "1", "--batch-size", str(sizes.batch_size), "--spawn-generator",
                   *sizes.precision_flags, "--export", "last"]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=PART_TIMEOUT_S,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        wall_s = time.perf_counter() - began
        if done.returncode != 0:
            raise SystemExit(f"device bench: ncf-trainer exited {done.returncode}: "
                             f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        (epoch,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"dataset": sizes.dataset, "batch_size": sizes.batch_size, "flags": list(sizes.precision_flags), "examples": round(epoch["examples_per_s"] *
            epoch["train_s"]), "train_examples_per_s": round(epoch["examples_per_s"]), "train_s": epoch["train_s"],
            "hr_at_10": epoch["hr_at_10"], "wall_s": round(wall_s, 1)}


def summary(steps: dict, pipeline: dict, e2e: dict, smoke: bool, seconds: float) -> dict:
    rates = {name: {b: r["examples_per_s"] for b, r in by_batch.items()} for name, by_batch in steps["results"].items()}
    speedups = {name: {b: round(rate / rates["float32"][b], 3) for b, rate in by_batch.items()}
                for name, by_batch in rates.items() if name != "float32"}
    best = max(rate for by_batch in rates.values() for rate in by_batch.values())
    return {"smoke": smoke, "device": steps["device"], "gpus": steps["gpus"],
            "train_step_examples_per_s": rates, "speedup_vs_float32": speedups,
            "best_train_step_examples_per_s": best, "goal_examples_per_s": GOAL_EXAMPLES_PER_S,
            "ratio_to_goal": round(best / GOAL_EXAMPLES_PER_S, 5),
            "input": {"examples": pipeline["examples"], "cold_examples_per_s": pipeline["cold_examples_per_s"],
                      "warm_examples_per_s": pipeline["examples_per_s"], "cold_to_warm": pipeline["cold_to_warm"],
                      "cold_startup_s": pipeline["cold_startup_s"], "cpus": pipeline["cpus"]},
            "end_to_end": e2e, "seconds": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU (the test suite runs it)")
    p.add_argument("--part", choices=("train-step",), help=argparse.SUPPRESS)  # a child process's part
    args = p.parse_args()
    sizes = SMOKE if args.smoke else FULL
    if args.part == "train-step":
        print(json.dumps(train_steps(sizes)))
        return
    began = time.perf_counter()
    smoke = ["--smoke"] if args.smoke else []
    steps = last_json([sys.executable, __file__, "--part", "train-step", *smoke])
    print(f"train step: {steps['device']}", flush=True)
    pipeline = last_json([sys.executable, str(BENCH / "input_pipeline.py"), "--examples", str(sizes.input_examples),
                          "--repeats", "2", "--batch-sizes", f"{sizes.batches[1]},{sizes.batches[0]}"])
    print(f"input: cold {pipeline['cold_examples_per_s'] / 1e6:.1f}M/s, warm {pipeline['examples_per_s'] / 1e6:.1f}M/s",
          flush=True)
    e2e = end_to_end(sizes)
    print(f"end to end: {e2e['train_examples_per_s'] / 1e6:.2f}M examples/s training, {e2e['wall_s']} s wall", flush=True)
    print(json.dumps(summary(steps, pipeline, e2e, args.smoke, time.perf_counter() - began)))


if __name__ == "__main__":
    main()
