"""A final failure ends both sides at once (DESIGN.md "Restarts, failures, timeouts"): a side
that fails on invalid input (exit 2, which Kubernetes never retries) says so in its status, and
the other side exits 2 within seconds instead of waiting --peer-timeout for an attempt that
cannot come. Two real processes, as the two Jobs run."""

from __future__ import annotations

import pytest

from testkit.builders import read_status
from testkit.jobs import Job

pytestmark = pytest.mark.slow


def test_a_missing_ratings_file_ends_the_trainer_at_once_with_the_generators_cause(tmp_path, cli_env):
    run_url, missing = str(tmp_path / "run"), str(tmp_path / "typo" / "u.data")
    # The trainer keeps the default --peer-timeout (300 s) and --start-timeout: only the
    # generator's final status may end it.
    trainer = Job("trainer", ["--data-dir", run_url, "--dataset", "ml-100k", "--ratings", missing, "--epochs", "1"],
                  tmp_path, cli_env)
    generator = Job("generator", ["--data-dir", run_url, "--workers", "1"], tmp_path, cli_env)
    assert generator.wait(120) == 2, generator.log[-3000:]
    assert trainer.wait(60) == 2, trainer.log[-3000:]  # seconds, not --peer-timeout's 300
    cause = f"{missing}: ratings file not found"
    assert f"the generator failed with exit code 2 (invalid input; it will not be retried): InvalidInput: {cause}" \
        in trainer.log
    status = read_status(run_url, "generator")
    assert (status.state, status.exit_code, status.final) == ("failed", 2, True) and cause in status.message
    trainer_status = read_status(run_url, "trainer")
    assert (trainer_status.exit_code, trainer_status.final) == (2, True), "the trainer's end is final too"


def test_a_spawned_generators_exit_2_is_the_trainers_exit_2(tmp_path, cli_env):
    run_url, missing = str(tmp_path / "run"), str(tmp_path / "typo" / "u.data")
    trainer = Job("trainer", ["--data-dir", run_url, "--dataset", "ml-100k", "--ratings", missing, "--epochs", "1",
                              "--spawn-generator"], tmp_path, cli_env)
    assert trainer.wait(120) == 2, trainer.log[-3000:]
    last = trainer.log.strip().splitlines()[-1]
    assert "failed with exit code 2 (invalid input; it will not be retried)" in last
    assert f"{missing}: ratings file not found" in last
