"""Benchmark: generator pods past one (issue 19): one slice at MovieLens 1B size, and two pods' uploads.

    python bench/shards.py [--scale 1.0] [--slices 16] [--bandwidth 2e6] [--upload-concurrency 8]

slice   In a process of its own (its peak RSS is the slice's alone): slice 0 of 16 of
        synthetic-20mx16x32 at full size (about 137k users, 76M positives, 382M examples),
        made from its user range alone (make_s), then epochs written by one EpochWriter with one
        worker (one core) to local disk, the floor after each (bench/epoch_writer.py's:
        drawing as many random ids with numpy plus writing as many bytes): slice_examples_per_s
        and slice_ratio_to_floor (best steady epoch over best floor), slice_peak_rss_mb.
uploads Through a chaos bucket (testkit/chaos_bucket.py, own process) shaped to --bandwidth
        bytes/s per connection, low enough that the two cores are not the limit: ncf-generator
        as one pod (--shards 1) and then as two pods (--shards 2, each its own process and so its
        own connections) write the same run (synthetic-20m, 2 slices, --upload-epochs epochs of
        one negative per positive, 9 eval negatives). Each run's upload rate is its epochs' bytes
        over the time between the first and the last epoch's ready.json (the steady state, seen
        from outside); aggregate_upload_ratio = two pods' rate over one pod's (target >= 1.8).
Last line, one JSON object with these figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from epoch_writer import measure_floor  # this folder's: the same floor

from testkit import chaos_bucket, emulator
from testkit.builders import command, publish_command


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="synthetic-20mx16x32's size (1: MovieLens 1B's)")
    parser.add_argument("--slices", type=int, default=16, help="the slice measured is 1 / slices of the users")
    parser.add_argument("--epochs", type=int, default=3, help="slice epochs to write (>= 2)")
    parser.add_argument("--bandwidth", type=float, default=2e6, help="bytes/s per connection and direction")
    parser.add_argument("--upload-concurrency", type=int, default=8)
    parser.add_argument("--upload-epochs", type=int, default=3, help="epochs per upload run (>= 2)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the slice is written")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "ncf-bench-cache"))
    args = parser.parse_args()
    if min(args.epochs, args.upload_epochs) < 2:
        parser.error("--epochs, --upload-epochs: expected at least 2 (the first epoch is not the steady state)")
    return args


def main() -> None:
    args = parse_args()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        slice_figures = pool.apply(measure_slice, (args,))
    upload_figures = measure_uploads(args)
    report(args, slice_figures, upload_figures)


def measure_slice(args) -> dict:
    """Slice 0 of synthetic-20mx16x32 made and written on one core (runs in a process of its own)."""
    from generator.sampling import EpochSlice, EpochWriter
    from generator.slices import Slicing
    from generator.synthetic1b import SyntheticExpanded

    source = SyntheticExpanded(args.scale)
    index = source.index()
    slicing = Slicing.cut(index.block_users, index.block_train, args.slices, "bench")
    first, last = int(slicing.users[0]), int(slicing.users[1])
    started = time.perf_counter()
    piece = EpochSlice(index=0, dataset=source.load_users(first, last), first_user=first, first_part=0,
                       all_users=index.num_users)
    make_s = time.perf_counter() - started
    scratch = Path(tempfile.mkdtemp(prefix="ncf-bench-", dir=args.dir))
    times, floors = [], []
    try:
        with EpochWriter([piece], seed=0, num_neg=4, workers=1) as writer:
            for epoch in range(args.epochs):
                started = time.perf_counter()
                listing = writer.write(epoch, str(scratch / "epoch"))
                times.append(time.perf_counter() - started)
                shutil.rmtree(scratch / "epoch")
                if epoch:
                    floors.append(measure_floor(sum(p.num_examples for p in listing), index.num_items,
                                                [p.size for p in listing], scratch / "floor"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    examples = sum(p.num_examples for p in listing)
    return {"users": last - first, "positives": piece.dataset.num_train, "examples": examples, "make_s": make_s,
            "times": times, "floors": floors, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure_uploads(args) -> dict:
    """Upload rates (bytes/s) of one generator process and of two, through the shaped bucket."""
    server, upstream = emulator.start()
    proxy, proxied = chaos_bucket.start_process(upstream, args.bandwidth, 0.02)
    os.environ["STORAGE_EMULATOR_HOST"] = upstream  # this process polls past the proxy
    try:
        bucket = emulator.make_bucket(upstream)
        env = {**os.environ, "STORAGE_EMULATOR_HOST": proxied}
        return {pods: upload_rate(f"gs://{bucket}/pods-{pods}", pods, args, env) for pods in (1, 2)}
    finally:
        proxy.kill()
        emulator.stop(server)


def upload_rate(run_url: str, pods: int, args, env: dict) -> float:
    """One run by `pods` generator processes: its epochs' bytes per second between the first and
    the last epoch's ready.json."""
    from protocol import Ready, RunDir, storage

    run, epochs = RunDir(run_url), args.upload_epochs
    publish_command(run_url, command("synthetic-20m", epochs=epochs, num_neg=1, eval_negatives=9, slices=2,
                                     buffer_epochs=epochs))
    processes = [subprocess.Popen([sys.executable, "-m", "generator", "--data-dir", run_url, "--cache-dir",
                                   args.cache_dir, "--workers", "1", "--upload-concurrency",
                                   str(args.upload_concurrency), "--shards", str(pods), "--shard", str(shard)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for shard in range(pods)]
    seen = []
    for epoch in range(epochs):
        storage.wait_until(lambda: storage.exists(RunDir.ready(run.epoch_dir(epoch))), 900,
                           f"epoch {epoch} of {pods} pods", max_interval=0.05)
        seen.append(time.monotonic())
    for process in processes:
        if process.wait(timeout=120) != 0:
            raise RuntimeError(f"a generator of the {pods}-pod run exited with {process.returncode}")
    sizes = [sum(p.size for p in storage.read_message(RunDir.ready(run.epoch_dir(k)), Ready).parts)
             for k in range(1, epochs)]
    return sum(sizes) / (seen[-1] - seen[0])


def report(args, slice_figures: dict, upload_figures: dict) -> None:
    steady, floor = min(slice_figures["times"][1:]), min(slice_figures["floors"])
    result = {
        "scale": args.scale,
        "slice_users": slice_figures["users"],
        "slice_positives": slice_figures["positives"],
        "slice_examples": slice_figures["examples"],
        "slice_make_s": round(slice_figures["make_s"], 1),
        "slice_best_seconds": round(steady, 2),
        "slice_floor_seconds": round(floor, 2),
        "slice_examples_per_s": round(slice_figures["examples"] / steady),
        "slice_ratio_to_floor": round(steady / floor, 2),
        "slice_peak_rss_mb": round(slice_figures["peak_rss_mb"]),
        "bandwidth_per_connection": args.bandwidth,
        "upload_concurrency": args.upload_concurrency,
        "one_pod_upload_mb_s": round(upload_figures[1] / 1e6, 1),
        "two_pods_upload_mb_s": round(upload_figures[2] / 1e6, 1),
        "aggregate_upload_ratio": round(upload_figures[2] / upload_figures[1], 2),
    }
    print(f"slice: {result['slice_users']:,} users, {result['slice_examples']:,} examples per epoch, made in "
          f"{result['slice_make_s']} s; epochs {', '.join(f'{t:.1f}' for t in slice_figures['times'])} s, floors "
          f"{', '.join(f'{t:.1f}' for t in slice_figures['floors'])} s; peak RSS {result['slice_peak_rss_mb']} MB")
    print(f"uploads: one pod {result['one_pod_upload_mb_s']} MB/s, two pods {result['two_pods_upload_mb_s']} MB/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
