"""Past one pod (DESIGN.md): epochs in slices of users, made by N generator pods, interleaved
by the trainer. The same run from 1, 2 or 3 pods is the same bytes; a pod killed mid-epoch
is restarted (as its Indexed Job would) and the run completes with every epoch trained once."""

from __future__ import annotations

import time

import numpy as np
import pytest

from generator.slices import Slicing, owned
from protocol import MessageError, PeerError, Ready, RunDir, Status, storage
from protocol.shards import GeneratorWatch
from runstatus.render import render
from runstatus.snapshot import read_snapshot
from testkit.builders import metrics, publish_command
from testkit.generator_support import make_command, run_generator, start_generator
from testkit.jobs import generator, snapshot, trainer, wait_until
from trainer.data import Interleave, read_epoch


def test_slices_are_contiguous_users_balanced_by_positives():
    counts = np.random.default_rng(3).integers(1, 200, 1000)
    slicing = Slicing.cut(np.arange(1001), counts, 7, "command.json")
    assert slicing.users[0] == 0 and slicing.users[-1] == 1000 and np.all(np.diff(slicing.users) > 0)
    assert list(slicing.positives) == [counts[a:b].sum() for a, b in zip(slicing.users[:-1], slicing.users[1:])]
    assert slicing.positives.max() - slicing.positives.min() <= 2 * counts.max()
    assert owned(7, 1, 3) == [1, 4] and owned(7, 2, 3) == [2, 5]


def test_more_slices_than_blocks_of_users_is_refused_naming_the_field():
    with pytest.raises(MessageError, match="slices"):
        Slicing.cut(np.arange(4), np.array([5, 5, 5]), 4, "command.json")


def test_interleave_puts_every_example_once_and_each_batch_in_proportion():
    sizes, batch = [5000, 1200, 3333, 17], 256
    interleave = Interleave(sizes, batch)
    owner = np.full(sum(sizes), -1)
    for s, size in enumerate(sizes):
        for start in range(0, size, 700):  # parts of 700 examples
            for run in interleave.runs(s, start, min(start + 700, size)):
                assert (owner[run.target:run.target + run.count] == -1).all()
                owner[run.target:run.target + run.count] = s
    assert (owner >= 0).all(), "every place filled once"
    for first in range(0, len(owner), batch):
        counts = np.bincount(owner[first:first + batch], minlength=len(sizes))
        expected = len(owner[first:first + batch]) * np.array(sizes) / sum(sizes)
        assert np.abs(counts - expected).max() < 2, (first, counts, expected)
    assert Interleave.of([100], batch) is None, "one slice: the parts' own order"


@pytest.mark.slow
def test_the_trainer_reads_a_sliced_epoch_interleaved(tmp_path, cli_env):
    run_url = str(tmp_path / "run")
    publish_command(run_url, make_command("synthetic-small", epochs=1, slices=3))
    assert run_generator(run_url, cli_env, "--part-examples", "20000").returncode == 0
    ready = storage.read_message(RunDir.ready(RunDir(run_url).epoch_dir(0)), Ready)
    listed = read_epoch(RunDir(run_url), 0, ready.run_id)
    trained = read_epoch(RunDir(run_url), 0, ready.run_id, batch_size=1000)
    assert sorted(zip(listed.user, listed.item, listed.label)) == sorted(zip(trained.user, trained.item, trained.label))
    # Each slice is a range of users, listed one after the other; every trained batch draws
    # from each in proportion to its size.
    starts = np.cumsum([0, *ready.slices])
    for s in range(3):
        users = listed.user[starts[s]:starts[s + 1]]
        for batch in (trained.user[:1000], trained.user[5000:6000]):
            share = ((batch >= users.min()) & (batch <= users.max())).sum()
            assert abs(share - 1000 * ready.slices[s] / ready.num_examples) < 2


@pytest.mark.slow
def test_one_two_or_three_pods_write_the_same_bytes(tmp_path, cli_env):
    files = {}
    for shards in (1, 2, 3):
        run_url = str(tmp_path / f"pods-{shards}")
        publish_command(run_url, make_command("synthetic-small", epochs=2, slices=3))
        pods = [start_generator(run_url, cli_env, "--shard", str(i), "--shards", str(shards),
                                "--part-examples", "20000", "--cache-dir", str(tmp_path / "cache"))
                for i in range(shards)]
        assert [pod.wait(timeout=240) for pod in pods] == [0] * shards, [pod.stderr.read()[-2000:] for pod in pods]
        files[shards] = {name: data for name, data in snapshot(run_url).items()
                         if name.startswith(("epochs/", "dataset/"))}
        statuses = [storage.read_message(storage.join(run_url, "status", name), Status)
                    for name in storage.listdir(storage.join(run_url, "status"))]
        assert sorted((s.shard, s.shards, s.state) for s in statuses) == [(i, shards, "done") for i in range(shards)]
    assert any(name.endswith("part-00003") for name in files[1]), "several parts per epoch"
    assert files[2] == files[1] and files[3] == files[1]


@pytest.mark.slow
def test_three_pods_on_gcs_one_killed_mid_epoch_and_restarted(gcs_bucket, tmp_path, cli_env):
    run_url = gcs_bucket + "/runs/shards"
    epochs = 3
    train = trainer(run_url, tmp_path, cli_env, "--slices", "3", "--buffer-epochs", "1", epochs=epochs)
    pods = [generator(run_url, tmp_path, cli_env, "--shard", str(i), "--shards", "3", "--part-examples", "20000")
            for i in range(3)]
    run = RunDir(run_url)

    def pod_1_waits_to_make_epoch_1() -> bool:  # --buffer-epochs 1: until the trainer consumed epoch 0
        try:
            status = storage.read_message(run.status("generator-1"), Status)
        except FileNotFoundError:
            return False
        return (status.state, status.epoch) == ("waiting", 1)

    wait_until(pod_1_waits_to_make_epoch_1, 240, "pod 1 waiting to make epoch 1", poll=0.02)
    pods[1].kill()
    assert not storage.exists(run.slice_ready(run.epoch_dir(1), 1)), "killed before its slice of epoch 1 was made"
    pods[1] = generator(run_url, tmp_path, cli_env, "--shard", "1", "--shards", "3", "--part-examples", "20000")
    codes = [pod.wait(300) for pod in pods] + [train.wait(300)]
    assert codes == [0, 0, 0, 0], "\n".join(job.log[-2000:] for job in [*pods, train])
    assert [m.epoch for m in metrics(run_url)] == list(range(epochs)), "every epoch trained once"
    assert "starting at epoch 1" in pods[1].log, "the restarted pod goes on where it stopped"
    assert storage.listdir(run.epochs_dir) == [], "every consumed epoch is deleted"


def _pod_status(run_url: str, shard: int, shards: int, state: str, epochs_done: int = 0) -> None:
    storage.overwrite(RunDir(run_url).generator_status(shard, shards), Status(
        side="generator", state=state, run_id="r1", epoch=None, epochs_done=epochs_done, time=time.time(),
        shard=shard, shards=shards))


def test_ncf_status_shows_every_generator_pod_and_the_slowest_ones_count(tmp_path):
    run_url = str(tmp_path / "run")
    _pod_status(run_url, 0, 3, "generating", epochs_done=4)
    _pod_status(run_url, 2, 3, "waiting", epochs_done=2)
    snapshot = read_snapshot(RunDir(run_url))
    assert list(snapshot.status) == ["generator-0", "generator-1", "generator-2", "trainer"]
    assert snapshot.status["generator-1"] is None, "a pod that has not written yet is shown as such"
    assert snapshot.epochs_generated == 0, "an epoch is made only when every pod made its slices"
    screen = render(snapshot)
    assert "Generator-0 GENERATING" in screen and "Generator-1 no heartbeat yet" in screen


def test_the_trainer_waits_for_every_pod_and_names_the_one_that_never_came(tmp_path):
    run_url = str(tmp_path / "run")
    watch = GeneratorWatch(RunDir(run_url), start_timeout=0.5, peer_timeout=30, min_poll=0.0)
    assert watch.check() == [None], "no pod yet: not started"
    _pod_status(run_url, 0, 2, "done")
    assert [s and s.state for s in watch.check()] == ["done", None]
    assert not watch.all_done("r1"), "pod 1 has not made its slices"
    time.sleep(0.6)
    with pytest.raises(PeerError, match="generator-1 never started"):
        watch.check()
