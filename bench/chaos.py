"""Benchmark: the fault matrix of tests/test_faults.py, run end to end through the chaos bucket.

    python bench/chaos.py [--epochs 2] [--only NAME ...]

Each row runs both Jobs as separate processes on gs:// (fake-gcs-server behind the chaos
proxy, testkit/chaos_bucket.py) with one kind of fault, restarts a side where the scenario says
so, and checks the outcome: both exit 0, every epoch trained exactly once (metrics.jsonl) and
every epoch's ready.json listing the parts of a fault-free run. The last line printed is one
JSON object: faults injected by kind, runs completed, epochs lost and duplicated (0 and 0),
and listings that differed from the fault-free run.

The proxy, the Job helpers and the listings' watcher are the tests' own (testkit).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from testkit import emulator
from testkit.builders import command, metrics_line_epochs, publish_command, read_status
from testkit.chaos_bucket import ChaosBucket, fail, lose, stall
from testkit.epoch_listings import Watcher, listings
from testkit.jobs import FAST, Job, generator, trainer, wait_until

BUCKET_ENV = {"NCF_BUCKET_CONNECT_TIMEOUT_S": "2", "NCF_BUCKET_READ_TIMEOUT_S": "5", "PYTHONUNBUFFERED": "1"}
GEN_ARGS = ("--part-examples", "20000")
TRAIN_ARGS = ("--buffer-epochs", "1")


def expected_listings(emulator_url: str, epochs: int, log_dir: Path) -> dict:
    run_url = f"gs://{emulator.make_bucket(emulator_url)}/run"
    publish_command(run_url, command(epochs=epochs, eval_negatives=99, buffer_epochs=epochs))
    job = Job("generator", ["--data-dir", run_url, "--workers", "1", *FAST, *GEN_ARGS], log_dir, dict(os.environ))
    assert job.wait(300) == 0, job.log[-3000:]
    return listings(run_url)


def scenario_plain(rules):
    def run(chaos, start):
        chaos.add(*rules())
        return [start("generator"), start("trainer")]
    return run


def scenario_outage(chaos, start):
    gen, train = start("generator"), start("trainer")
    run_url = start.run_url
    wait_until(lambda: (g := read_status(run_url, "generator")) and g.state == "waiting" and g.epoch == 1
               and (t := read_status(run_url, "trainer")) and t.state in ("training", "waiting"), 300,
               "both sides polling")
    chaos.add(fail(503, window=(0, 45)))
    codes = [gen.wait(300), train.wait(300)]
    if codes != [3, 3]:
        raise AssertionError(f"expected both to exit 3 in the outage, got {codes}")
    chaos.clear()
    return [start("generator"), start("trainer")]


def scenario_restart(side: str):
    def run(chaos, start):
        method = "GET" if side == "trainer" else "POST"
        chaos.add(fail(403, method=method, name="run/epochs/000001/part-*", times=1))
        timeout = ("--peer-timeout", "45")
        jobs = {"generator": start("generator", *timeout), "trainer": start("trainer", *timeout)}
        code = jobs[side].wait(300)
        if code != 1:
            raise AssertionError(f"expected the {side} to exit 1, got {code}")
        time.sleep(20)  # Kubernetes' restart
        jobs[side] = start(side, *timeout)
        return list(jobs.values())
    return run


MATRIX = {
    "lost-responses": scenario_plain(lambda: [lose(create_only=True, once_per_object=True)]),
    "429-503-bursts": scenario_plain(lambda: [fail(429, window=(4, 12)), fail(503, window=(18, 26))]),
    "stalls": scenario_plain(lambda: [stall(60, method="GET", name="run/epochs/*/part-*", times=1),
                                      stall(60, method="GET", name="run/dataset/eval/part-*", times=1),
                                      stall(60, method="POST", name="run/epochs/*/part-*", times=2),
                                      stall(60, method="POST", name="run/status/*.json", times=1)]),
    "stalled-part-read": scenario_plain(lambda: [stall(60, method="GET", name="run/epochs/000001/part-*", times=1)]),
    "outage": scenario_outage,
    "trainer-restart": scenario_restart("trainer"),
    "generator-restart": scenario_restart("generator"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=sorted(MATRIX), help="run only these rows")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    server, emulator_url = emulator.start()
    os.environ["STORAGE_EMULATOR_HOST"] = emulator_url  # this process reads the bucket straight
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    log_dir = Path(tempfile.mkdtemp(prefix="ncf-chaos-"))
    try:
        expected = expected_listings(emulator_url, args.epochs, log_dir)
        rows = [run_row(name, emulator_url, args.epochs, expected, log_dir) for name in args.only or MATRIX]
    finally:
        emulator.stop(server)
    report(rows)


def run_row(name: str, emulator_url: str, epochs: int, expected: dict, log_dir: Path) -> dict:
    """One row of the matrix through a fresh chaos bucket: its faults, outcome and epochs."""
    started = time.monotonic()
    with ChaosBucket(emulator_url) as chaos:
        run_url = f"gs://{emulator.make_bucket(emulator_url)}/run"
        env = {**chaos.env(), **BUCKET_ENV}

        def start(side, *extra):
            if side == "generator":
                return generator(run_url, log_dir, env, *GEN_ARGS, *extra)
            return trainer(run_url, log_dir, env, *TRAIN_ARGS, *extra, epochs=epochs)
        start.run_url = run_url
        watcher, failure = Watcher(run_url), None
        try:
            codes = [job.wait(600) for job in MATRIX[name](chaos, start)]
            if codes != [0, 0]:
                raise AssertionError(f"exit codes {codes}; see {log_dir}")
        except AssertionError as error:
            failure = f"{name}: {error}"
        finally:
            seen = watcher.stop()
        faults = {k: v for k, v in chaos.counts().items() if k != "shape"}
    trained = Counter(metrics_line_epochs(run_url))
    print(f"{name:20s} {time.monotonic() - started:6.1f} s  epochs trained {dict(trained)}  faults {faults}",
          flush=True)
    return {"faults": faults, "failure": failure,
            "lost": sum(1 for e in range(epochs) if trained[e] == 0),
            "duplicated": sum(max(0, n - 1) for n in trained.values()),
            "differing": sum(1 for e, found in seen.items() for parts in found if parts != expected.get(e))}


def report(rows: list[dict]) -> None:
    faults = Counter()
    for row in rows:
        faults.update(row["faults"])  # keeps the kinds injected 0 times
    for row in rows:
        if row["failure"]:
            print("FAILED", row["failure"])
    print(json.dumps({"faults": dict(faults), "runs": len(rows),
                      "runs_completed": sum(row["failure"] is None for row in rows),
                      "epochs_lost": sum(row["lost"] for row in rows),
                      "epochs_duplicated": sum(row["duplicated"] for row in rows),
                      "listings_differing": sum(row["differing"] for row in rows)}))


if __name__ == "__main__":
    main()
