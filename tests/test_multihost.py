"""Several trainer hosts (issue 20): Keras on JAX, jax.distributed with gloo collectives on this
machine's CPU, against one generator on gs:// (the real fake-gcs-server). GPUs and TPUs
are not here: the same code runs on them with JAX's own collectives."""

from __future__ import annotations

import socket
import threading

import pytest

from protocol import PartInfo, PeerError, Ready, Result, RunDir, storage
from testkit.builders import metrics
from testkit.hosts import MULTIHOST, trainer_hosts, weights_checksum
from testkit.jobs import generator, trainer, wait_until
from trainer.data import HostShare, placement
from trainer.hosts import join


def ready_of(part_sizes: list[int], slices: list[int]) -> Ready:
    parts = [PartInfo(name=f"part-{k:05d}", num_examples=n, size=1, crc32c=0) for k, n in enumerate(part_sizes)]
    return Ready(run_id="r", kind="train", epoch=0, num_examples=sum(part_sizes), parts=parts, slices=slices)


@pytest.mark.parametrize("count", [1, 2, 3, 5])
@pytest.mark.parametrize("batch_size", [None, 7])
def test_the_hosts_shares_cover_every_example_once_and_differ_by_at_most_one_per_slice(count, batch_size):
    # Three slices of 10, 1 and 23 examples in parts of uneven sizes (ready.json's slice order).
    ready = ready_of([4, 6, 1, 5, 5, 13], [10, 1, 23])
    seen, sizes = [], []
    for index in range(count):
        total, runs = placement(ready, batch_size, HostShare(index, count))
        places = sorted(run.target + i for k in range(len(ready.parts)) for run in runs(k) for i in range(run.count))
        assert places == list(range(total)), "a host's examples fill its columns exactly"
        seen += [(k, run.source + i) for k in range(len(ready.parts)) for run in runs(k) for i in range(run.count)]
        sizes.append(HostShare(index, count).sizes(ready.slice_sizes()))
    assert sorted(seen) == [(k, i) for k, info in enumerate(ready.parts) for i in range(info.num_examples)]
    for per_slice in zip(*sizes):
        assert max(per_slice) - min(per_slice) <= 1


@pytest.mark.parametrize("missing", [1, 0])
def test_a_host_that_never_joins_is_exit_3_naming_it(tmp_path, cli_env, missing):
    run_url = str(tmp_path / "run")
    (present,) = trainer_hosts(run_url, tmp_path, cli_env, 2, "--start-timeout", "3", indices=[1 - missing])
    code = present.wait(120)
    assert code == 3, present.log[-2000:]
    expected = ("trainer host(s) 1 of 2 never joined host 0" if missing == 1 else
                "trainer host 0 did not answer at localhost:")
    assert expected in present.log
    assert not storage.exists(run_url), "nothing is written before every host has joined"


def assert_trained_once(run_url: str, epochs: int, batch_size: int) -> Result:
    result = storage.read_message(RunDir(run_url).result, Result)
    lines = metrics(run_url)
    assert [m.epoch for m in lines] == list(range(epochs)) and result.epochs_trained == epochs
    assert all(0 <= m.dropped_examples < batch_size for m in lines), "at most one global batch is dropped"
    assert storage.exists(storage.join(RunDir(run_url).model, "saved_model/saved_model.pb"))
    return result


@pytest.mark.slow
def test_two_hosts_on_gcs_train_as_one_host_does(gcs_bucket, tmp_path, cli_env):
    two = gcs_bucket + "/runs/two-hosts"
    jobs = [generator(two, tmp_path, cli_env), *trainer_hosts(two, tmp_path, cli_env, 2)]
    one = str(tmp_path / "one-host")
    jobs += [generator(one, tmp_path, cli_env), trainer(one, tmp_path, cli_env, *MULTIHOST, epochs=3)]
    codes = [job.wait(600) for job in jobs]
    assert codes == [0] * len(jobs), "\n".join(job.log[-2500:] for job in jobs)
    host0, host1 = jobs[1], jobs[2]
    assert weights_checksum(host0.log) == weights_checksum(host1.log), "the hosts' weights are identical"
    both = assert_trained_once(two, 3, 2048)
    alone = storage.read_message(RunDir(one).result, Result)
    assert abs(both.best_hr_at_10 - alone.best_hr_at_10) <= 0.02, (both, alone)
    assert both.best_hr_at_10 > 0.5, "synthetic-small's structure is learned"


@pytest.mark.slow
def test_a_host_killed_mid_epoch_fails_the_others_and_both_resume_from_the_checkpoint(gcs_bucket, tmp_path,
                                                                                      cli_env):
    run_url = gcs_bucket + "/runs/killed-host"
    # The generator waits out the trainer's restart (JobSet restarts only the trainer Job).
    gen = generator(run_url, tmp_path, cli_env, "--peer-timeout", "120")
    host0, host1 = trainer_hosts(run_url, tmp_path, cli_env, 2, epochs=4)
    wait_until(lambda: metrics(run_url), 300, "the first epoch trained")
    host1.kill()
    assert host0.wait(120) != 0, "host 0 fails once host 1 is gone, within --peer-timeout"
    done_before = [m.epoch for m in metrics(run_url)]
    host0, host1 = trainer_hosts(run_url, tmp_path, cli_env, 2, epochs=4)
    assert [host0.wait(600), host1.wait(600), gen.wait(120)] == [0, 0, 0], host0.log[-3000:] + host1.log[-3000:]
    assert_trained_once(run_url, 4, 2048)
    assert [m.epoch for m in metrics(run_url)][:len(done_before)] == done_before
    assert all("resuming from the checkpoint" in job.log for job in (host0, host1))
    assert weights_checksum(host0.log) == weights_checksum(host1.log)


def test_a_host_restarted_while_an_old_service_holds_the_port_keeps_trying_until_its_timeout():
    # What a restarted host meets when its peers' previous attempt still runs: JAX's gRPC service
    # on the coordinator port, answering with bytes that are not ours. It must not give up at once
    # (each early exit would use up one of the Job's retries), only at --start-timeout.
    answers = []

    def old_service(server: socket.socket) -> None:
        while True:
            peer, _ = server.accept()
            answers.append(peer.recv(64))
            peer.sendall(b"\x00\x00\x12\x04\x00")  # the start of an HTTP/2 frame
            peer.close()

    with socket.create_server(("127.0.0.1", 0)) as server:
        threading.Thread(target=old_service, args=(server,), daemon=True).start()
        with pytest.raises(PeerError, match="trainer host 0 did not answer at .* within --start-timeout 2 s"):
            join(2, 1, f"127.0.0.1:{server.getsockname()[1]}", 2)
    assert len(answers) >= 2 and all(a.startswith(b"ncf-trainer-host 1 2") for a in answers)


@pytest.mark.parametrize("flags, expected", [
    (["--hosts", "2"], "--coordinator: expected HOST:PORT of host 0's coordination service"),
    (["--hosts", "2", "--coordinator", "host-0"], "--coordinator: expected HOST:PORT, got 'host-0'"),
    (["--hosts", "2", "--coordinator", "h:1", "--host-index", "2"], "--host-index: expected 0..1 (--hosts 2), got 2"),
    (["--hosts", "3", "--coordinator", "h:1", "--batch-size", "1024"], "--batch-size: expected a multiple of --hosts 3"),
])
def test_host_flags_that_cannot_work_are_refused_before_anything_starts(flags, expected, capsys):
    from trainer.config import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--data-dir", "/nowhere", "--dataset", "ml-100k", *flags])
    assert exit_.value.code == 2 and expected in capsys.readouterr().err
