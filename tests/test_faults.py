"""Both Jobs, as separate OS processes on gs://, through the chaos bucket (testkit/chaos_bucket.py):
each fault of DESIGN.md "What a real bucket does" and each restart ends with both exiting 0,
every epoch trained exactly once (metrics.jsonl) and every epoch's ready.json listing the
same parts as a fault-free run with the same seed.

The bucket's timeouts are shortened through the environment (protocol/defaults.py):
connect 2 s, read 5 s. The deadline for a read or write the Job cannot go on without stays
120 s, so an outage shorter than that is ridden out by such calls, while polls give up after
--peer-timeout. gcsfs retries a failing request for about 33 s itself before it raises.
"""

from __future__ import annotations

import os
import time

import pytest

from testkit.builders import metrics_line_epochs, publish_command, read_status
from testkit.builders import command as make_command
from testkit.chaos_bucket import fail, lose, stall
from testkit.epoch_listings import Watcher, listings
from testkit.jobs import FAST, generator, trainer, wait_until

pytestmark = pytest.mark.slow

EPOCHS = 2
BUCKET_ENV = {"NCF_BUCKET_CONNECT_TIMEOUT_S": "2", "NCF_BUCKET_READ_TIMEOUT_S": "5"}
# Several parts per epoch; with --buffer-epochs 1 the generator waits for the trainer between
# epochs, so the fault windows meet both sides in every phase.
GEN_ARGS = ("--part-examples", "20000")
RUN_TIMEOUT = 150


@pytest.fixture(scope="module")
def expected(fake_gcs, tmp_path_factory) -> dict[int, list[dict]]:
    """Every epoch's part listing from a fault-free generator (no trainer: it keeps them all)."""
    from conftest import make_bucket

    from testkit.jobs import Job

    run_url = f"gs://{make_bucket(fake_gcs)}/run"
    publish_command(run_url, make_command(epochs=EPOCHS, eval_negatives=99, buffer_epochs=EPOCHS))
    job = Job("generator", ["--data-dir", run_url, "--workers", "1", *FAST, *GEN_ARGS],
              tmp_path_factory.mktemp("expected"), dict(os.environ))
    assert job.wait(120) == 0, job.log[-3000:]
    seen = listings(run_url)
    assert sorted(seen) == list(range(EPOCHS))
    return seen


@pytest.fixture
def tandem(chaos_bucket, chaos_env, tmp_path, expected):
    """start(gen_args, train_args) -> (generator, trainer); check() asserts the run's outcome."""
    chaos, bucket = chaos_bucket
    run_url = f"{bucket}/run"
    env = {**chaos_env, **BUCKET_ENV}
    watcher = Watcher(run_url)

    class Tandem:
        url = run_url

        def generator(self, *extra):
            return generator(run_url, tmp_path, env, *GEN_ARGS, *extra)

        def trainer(self, *extra):
            return trainer(run_url, tmp_path, env, "--buffer-epochs", "1", *extra, epochs=EPOCHS)

        def status(self, side: str):
            return read_status(run_url, side)

        def check(self):
            assert metrics_line_epochs(run_url) == list(range(EPOCHS)), "every epoch trained exactly once"
            seen = watcher.stop()
            assert seen == {epoch: [parts] for epoch, parts in expected.items()}, \
                "each epoch lists the parts of a fault-free run, and only those"

    yield chaos, Tandem()
    watcher.stop()


def both_finish(gen, train, timeout: float = RUN_TIMEOUT):
    for job in (train, gen):
        code = job.wait(timeout)
        assert code == 0, f"{job.module} exited {code}:\n{job.log[-4000:]}"


def test_lost_responses_on_the_first_create_of_every_create_only_object(tandem):
    chaos, run = tandem
    lost = chaos.add(lose(create_only=True, once_per_object=True))
    both_finish(run.generator(), run.trainer())
    run.check()
    names = {name for action, _, name in chaos.events if action == "lose"}
    assert {"run/command.json", "run/dataset/meta.json", "run/dataset/eval/ready.json", "run/result.json",
            *(f"run/epochs/{e:06d}/ready.json" for e in range(EPOCHS))} <= names, names
    assert lost.fired == len(names)


def test_bursts_of_429_and_503_on_every_request(tandem):
    # gcsfs rides out a burst shorter than its own retries (about 33 s); 8 s bursts keep CI
    # short while every request in them still fails several times. A heartbeat write caught in
    # a burst lands only after gcsfs's backoff (up to 8 s more), so --peer-timeout must exceed
    # burst plus backoff, as its default (300 s) does: 30 s here.
    chaos, run = tandem
    chaos.add(fail(429, window=(4, 12)), fail(503, window=(18, 26)))
    patient = ("--peer-timeout", "30")
    both_finish(run.generator(*patient), run.trainer(*patient))
    run.check()
    assert chaos.counts()["fail"] >= 4


def test_stalled_requests_are_retried_after_the_read_timeout(tandem):
    # Five stalls of 60 s (far past the 5 s read timeout): two part reads (one of them a
    # training part the trainer needs), two part writes and a heartbeat write.
    chaos, run = tandem
    chaos.add(stall(60, method="GET", name="run/epochs/*/part-*", times=1),
              stall(60, method="GET", name="run/dataset/eval/part-*", times=1),
              stall(60, method="POST", name="run/epochs/*/part-*", times=2),
              stall(60, method="POST", name="run/status/*.json", times=1))
    both_finish(run.generator(), run.trainer())
    run.check()
    assert chaos.counts()["stall"] == 5


def test_an_outage_longer_than_peer_timeout_stops_both_then_a_restart_finishes(tandem):
    chaos, run = tandem
    gen, train = run.generator(), run.trainer()
    # Both sides polling: the generator waits for a free slot, the trainer trains epoch 0 and
    # waits for epoch 1 in the background. Then every request fails for 45 s.
    wait_until(lambda: (g := run.status("generator")) and g.state == "waiting" and g.epoch == 1
               and (t := run.status("trainer")) and t.state in ("training", "waiting"), 120,
               "the generator waiting for a free slot while the trainer trains epoch 0")
    outage = chaos.add(fail(503, window=(0, 45)))
    for job in (gen, train):
        code = job.wait(RUN_TIMEOUT)
        assert code == 3, f"{job.module} exited {code}:\n{job.log[-4000:]}"
        last = job.log.strip().splitlines()[-1]
        assert "the bucket kept failing" in last and "503" in last, last
    for side in ("generator", "trainer"):
        status = run.status(side)
        assert status.state == "failed" and "the bucket kept failing" in status.message, status
    assert outage.fired >= 10, "both sides met the outage again and again"
    chaos.clear()
    both_finish(run.generator(), run.trainer())
    run.check()


@pytest.mark.parametrize("side", ["trainer", "generator"])
def test_a_side_that_exits_1_mid_run_and_restarts_20_s_later_is_waited_for(tandem, side):
    chaos, run = tandem
    # A non-transient error (403) on epoch 1's parts: read by the trainer, written by the generator.
    method = "GET" if side == "trainer" else "POST"
    refused = chaos.add(fail(403, method=method, name="run/epochs/000001/part-*", times=1))
    timeout = ("--peer-timeout", "45")
    gen, train = run.generator(*timeout), run.trainer(*timeout)
    failing = train if side == "trainer" else gen
    code = failing.wait(RUN_TIMEOUT)
    assert code == 1, f"{side} exited {code}:\n{failing.log[-4000:]}"
    assert refused.fired == 1
    assert run.status(side).state == "failed"
    time.sleep(20)  # Kubernetes' restart
    restarted = run.trainer(*timeout) if side == "trainer" else run.generator(*timeout)
    both_finish(gen if side == "trainer" else restarted, restarted if side == "trainer" else train)
    run.check()
