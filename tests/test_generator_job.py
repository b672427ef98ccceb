"""The generator as a process: exit codes, heartbeats, the epoch buffer, kill -9 and restart.

Each test runs `python -m generator` and plays the trainer's part by hand: it writes
command.json and status/trainer.json and deletes consumed epochs.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
from testkit.builders import publish_command, write_status
from testkit.generator_support import (
    last_line, make_command, part_bytes, read_ready, read_status, run_generator,
    start_generator,
)
from testkit.jobs import ready_epochs, wait_until

from generator import config as generator_config
from protocol import Ready, RunDir, parts, storage

# The generator's CLI as a process, seconds per test: the fast loop has the generator's units.
pytestmark = pytest.mark.slow


def test_blocks_at_buffer_epochs_until_the_trainer_consumes_one(run_url, cli_env):
    publish_command(run_url, make_command("synthetic-small", epochs=4, buffer_epochs=2))
    write_status(run_url, "trainer", "training")
    process = start_generator(run_url, cli_env)
    try:
        wait_until(lambda: ready_epochs(run_url) == [0, 1], 60, "epochs 0 and 1", poll=0.02)
        wait_until(lambda: read_status(run_url).state == "waiting", 60, "the generator to wait", poll=0.02)
        time.sleep(1.0)
        assert ready_epochs(run_url) == [0, 1]
        assert not storage.listdir(RunDir(run_url).epoch_dir(2))  # not even started
        assert read_status(run_url).epochs_done == 2
        for consumed in range(4):  # the trainer: status first, then delete
            wait_until(lambda: consumed in ready_epochs(run_url), 60, f"epoch {consumed}", poll=0.02)
            assert len(ready_epochs(run_url)) <= 2
            write_status(run_url, "trainer", "training", epochs_done=consumed + 1)
            storage.delete(RunDir(run_url).epoch_dir(consumed))
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    status = read_status(run_url)
    assert (status.state, status.epochs_done) == ("done", 4)


def test_restart_after_kill_9_mid_epoch_gives_the_same_bytes(run_url, cli_env, ml100k):
    command = make_command("ml-100k", str(ml100k), epochs=3)
    reference = run_url + "-reference"
    publish_command(reference, command)
    assert run_generator(reference, cli_env, "--part-examples", "2000").returncode == 0

    publish_command(run_url, command)
    run = RunDir(run_url)

    def mid_epoch() -> bool:  # epoch 0 is ready; epoch 1 has parts but no ready.json yet
        # (epoch 1 is sampled while epoch 0's parts upload, so check epoch 0 after epoch 1)
        names = storage.listdir(run.epoch_dir(1))
        return len(names) > 3 and "ready.json" not in names and storage.exists(run.ready(run.epoch_dir(0)))

    process = start_generator(run_url, cli_env, "--part-examples", "2000", "--workers", "2")
    try:
        wait_until(mid_epoch, 60, "the generator to be writing epoch 1", poll=0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        process.kill()
    assert ready_epochs(run_url) == [0]
    assert run_generator(run_url, cli_env, "--part-examples", "2000").returncode == 0
    for epoch in range(3):
        assert read_ready(run_url, epoch) == read_ready(reference, epoch)
        assert part_bytes(run_url, epoch) == part_bytes(reference, epoch)


def test_restart_continues_after_what_the_trainer_consumed(run_url, cli_env, ml100k):
    publish_command(run_url, make_command("ml-100k", str(ml100k), epochs=4))
    write_status(run_url, "trainer", "training", epochs_done=3)  # epochs 0-2 consumed and deleted
    result = run_generator(run_url, cli_env)
    assert result.returncode == 0, result.stderr
    assert ready_epochs(run_url) == [3]
    assert "starting at epoch 3 of 4" in result.stderr


def test_stops_with_exit_0_when_the_trainer_is_done(run_url, cli_env, ml100k):
    command = make_command("ml-100k", str(ml100k), epochs=20, buffer_epochs=2)
    publish_command(run_url, command)
    # The trainer stopped early (--target-hr) after epoch 0, with epoch 1 already made.
    run = RunDir(run_url)
    info = parts.write(storage.join(run.epoch_dir(1), run.part_name(0)), {"user": np.zeros(1, np.uint16)})
    storage.publish_once(run.ready(run.epoch_dir(1)), Ready(run_id=command.run_id, kind="train", epoch=1,
                                                            num_examples=1, parts=[info]))
    write_status(run_url, "trainer", "done", epochs_done=1)
    result = run_generator(run_url, cli_env)
    assert result.returncode == 0, result.stderr
    status = read_status(run_url)
    assert (status.state, status.message) == ("done", "the trainer is done")
    assert storage.listdir(run.epochs_dir) == [], "no epoch is made, and the unread one is removed"


@pytest.mark.parametrize("document, field", [
    (b'{"run_id": "x",', "valid JSON"),
    ("missing", "'epochs'"),
    ({"train_batch_size": -5}, "'train_batch_size'"),
    ({"num_neg": 1682}, "'num_neg'"),
])
def test_invalid_command_exits_2_naming_the_field(run_url, cli_env, ml100k, document, field):
    valid = make_command("ml-100k", str(ml100k)).to_dict()
    if document == "missing":
        del valid["epochs"]
        document = valid
    elif isinstance(document, dict):
        document = {**valid, **document}
    text = document if isinstance(document, bytes) else json.dumps(document).encode()
    storage.publish_once(RunDir(run_url).command, text)
    result = run_generator(run_url, cli_env)
    assert result.returncode == 2, result.stderr
    message = last_line(result.stderr)
    assert "command.json" in message and field in message
    status = read_status(run_url)
    assert status.state == "failed" and field in status.message


def test_missing_ratings_file_exits_2(run_url, cli_env, tmp_path):
    missing = str(tmp_path / "nowhere" / "u.data")
    publish_command(run_url, make_command("ml-100k", missing))
    result = run_generator(run_url, cli_env)
    assert result.returncode == 2
    assert missing in last_line(result.stderr) and "not found" in last_line(result.stderr)
    assert read_status(run_url).state == "failed"


def test_no_command_within_start_timeout_exits_3(run_url, cli_env):
    result = run_generator(run_url, cli_env, "--start-timeout", "1")
    assert result.returncode == 3
    assert "trainer" in last_line(result.stderr)
    assert read_status(run_url).state == "failed"


def test_failed_trainer_exits_3(run_url, cli_env, ml100k):
    publish_command(run_url, make_command("ml-100k", str(ml100k), epochs=20, buffer_epochs=1))
    write_status(run_url, "trainer", "failed", message="CUDA out of memory")
    started = time.monotonic()
    result = run_generator(run_url, cli_env, "--peer-timeout", "3")
    assert result.returncode == 3
    assert time.monotonic() - started > 3, "a failed trainer gets --peer-timeout to come back (Kubernetes restarts it)"
    assert "the trainer failed: CUDA out of memory" in last_line(result.stderr)
    assert read_status(run_url).state == "failed"


def test_silent_trainer_exits_3(run_url, cli_env, ml100k):
    publish_command(run_url, make_command("ml-100k", str(ml100k), epochs=5, buffer_epochs=1))
    write_status(run_url, "trainer", "training")  # and never again
    result = run_generator(run_url, cli_env, "--peer-timeout", "2")
    assert result.returncode == 3
    assert "the trainer went silent" in last_line(result.stderr)
    assert ready_epochs(run_url) == [0]  # made one, then waited for the trainer in vain


def test_an_epoch_of_another_run_exits_2(run_url, cli_env, ml100k):
    publish_command(run_url, make_command("ml-100k", str(ml100k)))
    stale = RunDir.ready(RunDir(run_url).epoch_dir(0))
    storage.publish_once(stale, Ready(run_id="another-run", kind="train", epoch=0, num_examples=0, parts=[]))
    result = run_generator(run_url, cli_env)
    assert result.returncode == 2
    assert last_line(result.stderr).endswith(f"{stale} is of another run or of different settings (run_id: "
                                             "'another-run' in the file, 'test-run' from this run): resume with "
                                             "the same settings, or use a new --data-dir")


@pytest.mark.parametrize("cpu_max,expected", [
    ("50000 100000\n", lambda cpus: 1),  # limits.cpu: 500m
    ("150000 100000\n", lambda cpus: min(cpus, 2)),  # 1.5 CPUs: both, part-time
    ("max 100000\n", lambda cpus: cpus),  # no limit
    (None, lambda cpus: cpus),  # no cgroup v2
])
def test_workers_default_to_the_cpus_the_container_may_use(tmp_path, monkeypatch, cpu_max, expected):
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    monkeypatch.setattr(generator_config, "CGROUP_CPU_MAX", str(path))
    assert generator_config.usable_cpus() == expected(len(os.sched_getaffinity(0)))
