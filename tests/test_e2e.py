"""The two Jobs end to end as separate OS processes sharing a run directory, on a local
directory and on gs:// against the real fake-gcs-server, and what goes wrong between them."""

from __future__ import annotations

import time

import pytest

from testkit.builders import command, metrics
from testkit.builders import read_status as status
from testkit.jobs import generator, ready_epochs, snapshot, trainer, wait_until
from protocol import Ready, Result, RunDir, parts, storage

pytestmark = pytest.mark.slow


def assert_completed(run_url: str, epochs: int) -> Result:
    run = RunDir(run_url)
    result = storage.read_message(run.result, Result)
    assert result.epochs_trained == epochs
    lines = metrics(run_url)
    assert [m.epoch for m in lines] == list(range(epochs)), "one metrics line per epoch, in order"
    assert all(0.0 <= m.hr_at_10 <= 1.0 and m.examples_per_s > 0 for m in lines)
    assert storage.listdir(run.epochs_dir) == [], "every consumed epoch is deleted"
    assert status(run_url, "generator").state == "done"
    assert status(run_url, "trainer").state == "done"
    assert storage.exists(run.report), "the report PNG is written next to result.json"
    return result


@pytest.mark.parametrize("first", ["generator", "trainer"])
def test_two_jobs_complete_whichever_starts_first(run_url, tmp_path, cli_env, first):
    start_gen = lambda: generator(run_url, tmp_path, cli_env)  # noqa: E731
    start_train = lambda: trainer(run_url, tmp_path, cli_env, epochs=3)  # noqa: E731
    jobs = [start_gen(), start_train()] if first == "generator" else [start_train(), start_gen()]
    codes = {job.module: job.wait(300) for job in jobs}
    assert codes == {"generator": 0, "trainer": 0}, "\n".join(j.log[-2000:] for j in jobs)
    result = assert_completed(run_url, 3)
    assert result.best_hr_at_10 > 0.1, "synthetic-small has structure a model learns"


def test_spawn_generator_runs_both_from_one_command(tmp_path, cli_env):
    run_url = str(tmp_path / "run")
    job = trainer(run_url, tmp_path, cli_env, "--spawn-generator", epochs=2)
    assert job.wait(300) == 0, job.log[-3000:]
    assert_completed(run_url, 2)
    assert "HR@10" in job.log


def test_generator_killed_mid_epoch_and_restarted(run_url, tmp_path, cli_env):
    train = trainer(run_url, tmp_path, cli_env, "--buffer-epochs", "1", epochs=4)
    gen = generator(run_url, tmp_path, cli_env)
    wait_until(lambda: metrics(run_url), 180, "the first epoch trained")
    gen.kill()
    gen = generator(run_url, tmp_path, cli_env)
    assert gen.wait(300) == 0, gen.log[-3000:]
    assert train.wait(300) == 0, train.log[-3000:]
    assert_completed(run_url, 4)


def test_trainer_killed_mid_epoch_resumes_from_its_checkpoint(run_url, tmp_path, cli_env):
    gen = generator(run_url, tmp_path, cli_env)
    train = trainer(run_url, tmp_path, cli_env, epochs=4)
    wait_until(lambda: len(metrics(run_url)) >= 1, 180, "the first epoch trained")
    train.kill()
    done_before = [m.epoch for m in metrics(run_url)]
    train = trainer(run_url, tmp_path, cli_env, epochs=4)
    assert train.wait(300) == 0, train.log[-3000:]
    assert gen.wait(120) == 0, gen.log[-3000:]
    assert_completed(run_url, 4)
    assert "resum" in train.log.lower(), "the restarted trainer says it resumes"
    assert [m.epoch for m in metrics(run_url)][: len(done_before)] == done_before


def test_generator_dies_and_trainer_exits_3_after_peer_timeout(run_url, tmp_path, cli_env):
    train = trainer(run_url, tmp_path, cli_env, "--buffer-epochs", "1", epochs=20)
    gen = generator(run_url, tmp_path, cli_env)
    # Heartbeats carry the latest state (a short "generating" may never be written): wait
    # until the generator has made an epoch, then kill it.
    wait_until(lambda: (s := status(run_url, "generator")) and s.epochs_done >= 1, 120, "the generator's first epoch")
    gen.kill()
    killed_at = time.monotonic()
    assert train.wait(120) == 3, train.log[-3000:]
    assert time.monotonic() - killed_at < 8 + 15, "exits within --peer-timeout plus a few seconds"
    assert "generator went silent" in train.log
    assert status(run_url, "trainer").state == "failed"


def test_trainer_never_starts_and_generator_exits_3(run_url, tmp_path, cli_env):
    gen = generator(run_url, tmp_path, cli_env, "--start-timeout", "3")
    assert gen.wait(60) == 3, gen.log[-3000:]
    assert "command.json" in gen.log and "3 s" in gen.log


def test_stale_run_directory_is_refused_and_left_untouched(run_url, tmp_path, cli_env):
    old = command(run_id="old-run", epochs=9, eval_negatives=99)
    storage.ensure_writable(run_url)
    storage.publish_once(RunDir(run_url).command, old)
    before = snapshot(run_url)
    train = trainer(run_url, tmp_path, cli_env, epochs=2)
    assert train.wait(120) == 2, train.log[-3000:]
    assert "epochs" in train.log and "old-run" in train.log
    after = snapshot(run_url)
    assert {k: v for k, v in after.items() if not k.startswith("status/")} == \
           {k: v for k, v in before.items() if not k.startswith("status/")}


def plant_foreign_epoch(run_url: str, epoch: int) -> None:
    run = RunDir(run_url)
    folder = run.epoch_dir(epoch)
    info = parts.write(storage.join(folder, run.part_name(0)), {
        "user": parts.np.zeros(8, parts.np.uint16), "item": parts.np.ones(8, parts.np.uint16),
        "label": parts.np.ones(8, parts.np.uint8)})
    storage.publish_once(run.ready(folder), Ready(run_id="someone-elses-run", kind="train", epoch=epoch,
                                                  num_examples=8, parts=[info]))


def test_foreign_ready_json_is_refused(run_url, tmp_path, cli_env):
    train = trainer(run_url, tmp_path, cli_env, epochs=2)
    wait_until(lambda: storage.exists(RunDir(run_url).command), 60, "command.json")
    plant_foreign_epoch(run_url, 0)
    gen = generator(run_url, tmp_path, cli_env)
    codes = (train.wait(180), gen.wait(180))
    assert codes[0] in (2, 3) and codes[1] in (2, 3) and 2 in codes, train.log[-2000:] + gen.log[-2000:]
    assert "someone-elses-run" in train.log + gen.log
    assert metrics(run_url) == [], "nothing is trained on foreign data"


@pytest.mark.parametrize("mangle, field", [
    (lambda text: text[: len(text) // 2], "valid JSON"),
    (lambda text: text.replace('"seed": 0,', ""), "'seed'"),
    (lambda text: text.replace('"train_batch_size": 256', '"train_batch_size": -256'), "'train_batch_size'"),
])
def test_invalid_command_fails_the_generator_with_exit_2(run_url, tmp_path, cli_env, mangle, field):
    hand_made = command(run_id="hand-made", train_batch_size=256, seed=0)
    storage.ensure_writable(run_url)
    storage.publish_once(RunDir(run_url).command, mangle(hand_made.to_json().decode()).encode())
    gen = generator(run_url, tmp_path, cli_env)
    assert gen.wait(60) == 2, gen.log[-3000:]
    assert field in gen.log.splitlines()[-1], "the last log line names the problem"
    assert status(run_url, "generator").state == "failed"


def test_num_neg_beyond_the_catalogue_fails_generator_then_trainer(run_url, tmp_path, cli_env):
    train = trainer(run_url, tmp_path, cli_env, "--num-neg", "100000", epochs=2)
    gen = generator(run_url, tmp_path, cli_env)
    assert gen.wait(120) == 2, gen.log[-3000:]
    assert "'num_neg'" in gen.log
    assert train.wait(60) == 2, train.log[-3000:]  # the generator's exit 2 is final: so is the trainer's
    assert "generator failed with exit code 2" in train.log and "num_neg" in train.log


def test_corrupted_part_is_detected_and_not_trained_on(run_url, tmp_path, cli_env):
    run = RunDir(run_url)
    # The trainer publishes its command and is stopped before any data exists; restarted
    # with the same flags later, it resumes the same run. With one buffer slot and five
    # epochs the generator is still waiting for the trainer when it fails.
    train = trainer(run_url, tmp_path, cli_env, "--buffer-epochs", "1", epochs=5)
    wait_until(lambda: storage.exists(run.command), 60, "command.json")
    train.kill()
    gen = generator(run_url, tmp_path, cli_env)
    wait_until(lambda: 0 in ready_epochs(run_url), 120, "epoch 0 ready")
    part = storage.join(run.epoch_dir(0), run.part_name(0))
    data = bytearray(storage.read_bytes(part))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(part, bytes(data))
    train = trainer(run_url, tmp_path, cli_env, "--buffer-epochs", "1", epochs=5)
    assert train.wait(120) == 2, train.log[-3000:]
    assert "CRC32C" in train.log and "part-00000" in train.log
    assert metrics(run_url) == []
    assert gen.wait(60) == 2, "the generator stops at once: the trainer's exit 2 is final"


@pytest.mark.parametrize("side", ["generator", "trainer"])
def test_missing_bucket_or_folder_fails_fast_with_exit_2(side, fake_gcs, tmp_path, cli_env):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for url in ("gs://no-such-bucket-for-ncf/run", str(blocker / "run")):
        started = time.monotonic()
        job = generator(url, tmp_path, cli_env) if side == "generator" else trainer(url, tmp_path, cli_env)
        assert job.wait(60) == 2, job.log[-3000:]
        assert time.monotonic() - started < 30, "no retry storm"
        assert "cannot write" in job.log and url in job.log
