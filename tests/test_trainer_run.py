"""The trainer on run directories written directly with protocol (no generator process):
a full run, resume after crashes and after kill -9, refusal of foreign and corrupted data,
and the generator failing or never showing up. Local disk and fake-gcs-server. Last, the
quality bar on ml-100k through the real pipeline (the trainer spawns the generator)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from protocol import EpochMetrics, Result, RunDir, Status, storage
from testkit.trainer_support import run_cli
from testkit.builders import RUN_ID, metrics_line_epochs, write_status
from testkit.trainer_support import command, publish_epoch, trainer_args, write_run
from testkit.builders import REPO


# The trainer's CLI end to end, seconds per test: the fast loop has test_trainer_units.
pytestmark = pytest.mark.slow


def epoch_folder_names(run: RunDir) -> list[str]:
    return storage.listdir(run.epochs_dir)


def test_full_run(run_url, capsys):
    cmd = command(epochs=2)
    run = write_run(run_url, cmd)
    assert run_cli(trainer_args(run_url, cmd, "--steps-per-execution", "4")) == 0
    assert metrics_line_epochs(run.url) == [0, 1]
    result = storage.read_message(run.result, Result)
    assert (result.run_id, result.epochs_trained, result.dataset) == (RUN_ID, 2, "synthetic-small")
    assert epoch_folder_names(run) == []
    status = storage.read_message(run.status("trainer"), Status)
    assert (status.state, status.epochs_done, status.run_id) == ("done", 2, RUN_ID)
    assert storage.exists(storage.join(run.model, "model.keras"))
    assert storage.exists(storage.join(run.model, "saved_model", "saved_model.pb"))
    pointer = json.loads(storage.read_bytes(storage.join(run.checkpoints, "latest.json")))
    assert pointer["epochs_done"] == 2 and pointer["finished"]
    line = EpochMetrics.from_json(storage.read_bytes(run.metrics).decode().splitlines()[0])
    assert line.examples_per_s > 0 and line.train_s > 0 and line.data_wait_s >= 0
    # Started again after the end: nothing to do, exit 0, nothing retrained.
    assert run_cli(trainer_args(run_url, cmd)) == 0
    assert metrics_line_epochs(run.url) == [0, 1]


def test_mixed_precision_and_xla_flags(tmp_path):
    """The accelerator flags on CPU: mixed_bfloat16 (the TPU policy) and XLA-compiled steps."""
    import keras

    cmd = command(epochs=1)
    run = write_run(str(tmp_path / "run"), cmd)
    try:
        assert run_cli(trainer_args(run.url, cmd, "--mixed-precision", "--xla")) == 0
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert metrics_line_epochs(run.url) == [0]
    assert storage.read_message(run.result, Result).epochs_trained == 1


def test_target_hr_stops_early(tmp_path):
    cmd = command(epochs=3)
    run = write_run(str(tmp_path / "run"), cmd)
    # --target-hr is in (0, 1]; HR@10 after the first epoch is about 0.1 here (chance: 10 of 100 candidates).
    assert run_cli(trainer_args(run.url, cmd, "--target-hr", "0.05")) == 0
    result = storage.read_message(run.result, Result)
    assert result.epochs_trained == 1 and result.reached_target and result.target_hr == 0.05
    assert storage.read_message(run.status("trainer"), Status).state == "done"


class Killed(BaseException):
    """Stands in for kill -9 at a chosen point (not an Exception: nothing may catch it)."""


@pytest.mark.parametrize("crash_at", ["metrics", "delete"])
def test_resume_after_crash_between_checkpoint_and_delete(run_url, monkeypatch, crash_at):
    cmd = command(epochs=3)
    run = write_run(run_url, cmd)
    real_overwrite, real_delete = storage.overwrite, storage.delete

    def overwrite(url, payload):
        if crash_at == "metrics" and url == run.metrics and b'"epoch": 1' in bytes(payload if isinstance(payload, bytes) else b""):
            raise Killed()
        return real_overwrite(url, payload)

    def delete(url):
        if crash_at == "delete" and url == run.epoch_dir(1):
            raise Killed()
        return real_delete(url)

    monkeypatch.setattr(storage, "overwrite", overwrite)
    monkeypatch.setattr(storage, "delete", delete)
    with pytest.raises(Killed):
        run_cli(trainer_args(run_url, cmd))
    monkeypatch.undo()
    # The checkpoint after epoch 1 is written; metrics.jsonl / epochs/000001 lag behind it. (Writes
    # run in the background: the loop may notice the failure only after the next checkpoint.)
    assert json.loads(storage.read_bytes(storage.join(run.checkpoints, "latest.json")))["epochs_done"] in (2, 3)
    assert "000001" in epoch_folder_names(run)
    assert run_cli(trainer_args(run_url, cmd)) == 0
    assert metrics_line_epochs(run.url) == [0, 1, 2]
    assert epoch_folder_names(run) == []
    assert storage.read_message(run.result, Result).epochs_trained == 3


def test_kill_9_and_restart(run_url, cli_env):
    cmd = command(epochs=4)
    run = write_run(run_url, cmd, num_users=400, num_items=300, positives_per_user=40)
    argv = [sys.executable, "-m", "trainer", *trainer_args(run_url, cmd)]
    process = subprocess.Popen(argv, cwd=REPO, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # A checkpoint has landed (metrics.jsonl may list an epoch before its checkpoint lands).
        while not (storage.exists(run.metrics) and storage.read_bytes(run.metrics)
                   and storage.exists(storage.join(run.checkpoints, "latest.json"))):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint landed within 120 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    killed_at = len(metrics_line_epochs(run.url))
    assert 1 <= killed_at < 4 and not storage.exists(run.result)
    restart = subprocess.run(argv, cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert "resuming from the checkpoint" in restart.stderr
    assert metrics_line_epochs(run.url) == [0, 1, 2, 3]
    assert storage.read_message(run.result, Result).epochs_trained == 4
    assert epoch_folder_names(run) == []


def test_foreign_ready_json_is_refused(run_url, capsys):
    cmd = command(epochs=3)
    run = write_run(run_url, cmd, epochs=1)
    rng = np.random.default_rng(1)
    n = 100
    publish_epoch(run, "some-other-run", 1, rng.integers(0, 60, n).astype(np.uint16),
                  rng.integers(0, 120, n).astype(np.uint16), rng.integers(0, 2, n).astype(np.uint8))
    assert run_cli(trainer_args(run_url, cmd)) == 2
    err = capsys.readouterr().err
    ready_url = RunDir.ready(run.epoch_dir(1))
    assert f"{ready_url} is of another run or of different settings (run_id: 'some-other-run' in the file, " \
           f"'{RUN_ID}' from this run)" in err
    assert metrics_line_epochs(run.url) == [0]  # epoch 0 trained, nothing of epoch 1
    assert "000001" in epoch_folder_names(run)
    status = storage.read_message(run.status("trainer"), Status)
    assert status.state == "failed" and "some-other-run" in status.message


def test_corrupted_part_is_refused(run_url, capsys):
    cmd = command(epochs=2)
    run = write_run(run_url, cmd)
    part = storage.join(run.epoch_dir(0), RunDir.part_name(1))
    data = bytearray(storage.read_bytes(part))
    data[-100] ^= 0xFF
    storage.write_bytes(part, bytes(data))
    assert run_cli(trainer_args(run_url, cmd)) == 2
    err = capsys.readouterr().err
    assert "CRC32C" in err and "part-00001" in err
    assert not storage.exists(run.metrics)
    assert storage.read_message(run.status("trainer"), Status).state == "failed"


def test_generator_failed_exits_3(tmp_path, capsys):
    cmd = command(epochs=3)
    run = write_run(str(tmp_path / "run"), cmd, epochs=1)
    write_status(run.url, "generator", "failed", message="ValueError: out of disk")
    assert run_cli(trainer_args(run.url, cmd, "--peer-timeout", "1")) == 3  # after giving it time to come back
    assert "the generator failed: ValueError: out of disk" in capsys.readouterr().err
    assert metrics_line_epochs(run.url) == [0]


def test_generator_silent_exits_3(tmp_path, capsys):
    cmd = command(epochs=3)
    run = write_run(str(tmp_path / "run"), cmd, epochs=1, generator_state="generating")
    assert run_cli(trainer_args(run.url, cmd, "--peer-timeout", "1.5")) == 3
    assert "the generator went silent" in capsys.readouterr().err


def test_generator_never_appears_exits_3(tmp_path, capsys):
    url = str(tmp_path / "run")
    assert run_cli(["--data-dir", url, "--dataset", "synthetic-small", "--start-timeout", "1"]) == 3
    err = capsys.readouterr().err
    assert "the generator never started" in err and "--start-timeout" in err
    status = storage.read_message(RunDir(url).status("trainer"), Status)
    assert status.state == "failed"


# ----------------------------------------------------------------------------- quality on ml-100k
ML100K_TARGET = 0.20  # GitHub issue 4; most-popular scores 0.109 on this split


@pytest.mark.slow
def test_ml100k_quality(tmp_path, ml100k, cli_env):
    """The real pipeline (the trainer spawns the generator) on ml-100k with 999 eval
    negatives and the trainer's defaults (mlperf eval mode, the ml-100k model settings)
    reaches HR@10 0.20 within 20 epochs; --target-hr stops it as soon as it does.
    Most-popular scores 0.131 on these candidates (0.108 in paper mode, where NeuMF peaks
    at 0.196 to 0.2025 over seeds 0 to 2: too close to the bar for a test that must not flake)."""
    url = str(tmp_path / "run")
    argv = [sys.executable, "-m", "trainer", "--data-dir", url, "--dataset", "ml-100k", "--ratings", str(ml100k),
            "--eval-negatives", "999", "--spawn-generator", "--target-hr", str(ML100K_TARGET),
            "--heartbeat-interval", "1", "--start-timeout", "300", "--peer-timeout", "120"]
    done = subprocess.run(argv, cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    run = RunDir(url)
    result = storage.read_message(run.result, Result)
    curve = [round(EpochMetrics.from_json(line).hr_at_10, 4)
             for line in storage.read_bytes(run.metrics).decode().splitlines()]
    print("ml-100k HR@10 per epoch:", curve)
    assert result.reached_target and result.best_hr_at_10 >= ML100K_TARGET, curve
    assert result.epochs_trained <= 20


def test_kill_9_during_a_checkpoint_upload_resumes_from_the_previous_one(chaos_bucket, chaos_env):
    """The trainer killed while checkpoints/ckpt-000002's pieces upload (made slow by the chaos
    bucket) restarts from the checkpoint after epoch 0 and trains every epoch exactly once."""
    from testkit.chaos_bucket import shape

    chaos, bucket = chaos_bucket
    url = bucket + "/runs/kill"
    cmd = command(epochs=4)
    run = write_run(url, cmd)
    chaos.add(shape(bandwidth=10_000, name="*checkpoints/ckpt-000002/*"))  # ~140 KB of pieces: ~14 s
    argv = [sys.executable, "-m", "trainer", *trainer_args(url, cmd)]
    pointer = storage.join(run.checkpoints, "latest.json")
    process = subprocess.Popen(argv, cwd=REPO, env=chaos_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any(name and "ckpt-000002/" in name for _, _, name in list(chaos.events)):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the second checkpoint's upload never started"
            time.sleep(0.05)
        time.sleep(0.5)
        assert json.loads(storage.read_bytes(pointer))["epochs_done"] == 1  # ckpt-000002 not landed
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    assert json.loads(storage.read_bytes(pointer))["epochs_done"] == 1
    chaos.clear()
    restart = subprocess.run(argv, cwd=REPO, env=chaos_env, capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert "resuming from the checkpoint after epoch 0" in restart.stderr
    trained = [int(line.split(" epoch ")[1].split()[0]) for line in restart.stderr.splitlines()
               if " trainer INFO epoch " in line and "HR@10" in line]
    assert trained == [1, 2, 3]
    assert metrics_line_epochs(run.url) == [0, 1, 2, 3]
    assert storage.read_message(run.result, Result).epochs_trained == 4
    assert epoch_folder_names(run) == []
