"""The large-set path end to end at reduced scale, as separate real processes: ml-20mx16x32
shards written in the published format, two `ncf-generator --shard I --shards 2` pods, an
`ncf-trainer --slices 4`, then `ncf-recommend` on the set's raw user ids; and
synthetic-20mx16x32 at a scale given on the command line, with --spawn-generator."""

from __future__ import annotations

import subprocess

import pytest

from protocol import Command, DatasetMeta, Ready, Result, RunDir, storage
from testkit.builders import read_status
from testkit.jobs import generator, trainer
from testkit.movielens1b import write_shards

pytestmark = pytest.mark.slow

BLOCK, NUM_ITEMS = 60, 300  # four shards of at most 59 users: the raw ids of shards 1..3 are not dense
SMALL_MODEL = ["--batch-size", "512", "--mf-dim", "8", "--layers", "32,16", "--eval-negatives", "99"]


def recommend(model_url: str, user: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["ncf-recommend", "--model", model_url, "--user", str(user), "--k", "5"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_ml_20mx16x32_from_two_generator_pods_to_recommendations_on_raw_ids(run_url, tmp_path, cli_env):
    shards = storage.join(storage.parent(run_url), "ml-20mx16x32")
    written = write_shards(shards, shards=4, block=BLOCK, num_items=NUM_ITEMS)
    jobs = [trainer(run_url, tmp_path, cli_env, "--dataset", "ml-20mx16x32", "--ratings", shards, "--slices", "4",
                    *SMALL_MODEL, epochs=2),
            *(generator(run_url, tmp_path, cli_env, "--shard", str(i), "--shards", "2") for i in range(2))]
    codes = [job.wait(300) for job in jobs]
    assert codes == [0, 0, 0], "\n".join(job.log[-2000:] for job in jobs)

    run = RunDir(run_url)
    assert storage.read_message(run.result, Result).epochs_trained == 2
    assert len(storage.read_message(RunDir.ready(run.eval_dir), Ready).slices) == 4
    assert [read_status(run_url, f"generator-{i}").state for i in range(2)] == ["done", "done"]

    last_user = int(written.raw_users[-1])  # shard 3's: its raw id is past the dense ids' range
    assert last_user >= len(written.raw_users)
    served = recommend(run.model, last_user, cli_env)
    assert served.returncode == 0, served.stderr
    lines = served.stdout.splitlines()
    assert lines[0] == f"top 5 for user {last_user}:"
    items = [int(line.split()[1]) for line in lines[1:]]
    assert len(items) == 5 and all(0 <= item < NUM_ITEMS for item in items)

    hole = BLOCK - 1  # shard 0 keeps fewer than BLOCK users: this raw id is a hole, though a dense id
    assert hole not in written.raw_users and hole < len(written.raw_users)
    unknown = recommend(run.model, hole, cli_env)
    assert unknown.returncode == 2
    assert f"user {hole} is not in the model's training data" in unknown.stderr


def test_synthetic_20mx16x32_at_a_scale_from_the_command_line(tmp_path, cli_env):
    run_url = str(tmp_path / "run")
    job = trainer(run_url, tmp_path, cli_env, "--dataset", "synthetic-20mx16x32", "--synthetic-scale", "0.001",
                  "--spawn-generator", *SMALL_MODEL, epochs=1)
    assert job.wait(300) == 0, job.log[-3000:]
    run = RunDir(run_url)
    assert storage.read_message(run.command, Command).dataset.scale == 0.001
    meta = storage.read_message(run.meta, DatasetMeta)
    assert (meta.num_users, meta.num_items) == (round(2_197_225 * 0.001), round(855_776 * 0.001))
    assert storage.read_message(run.result, Result).epochs_trained == 1
    served = recommend(run.model, meta.num_users - 1, cli_env)
    assert served.returncode == 0, served.stderr
    assert len(served.stdout.splitlines()) == 6  # the header and five items
