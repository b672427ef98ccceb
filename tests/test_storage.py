"""Bucket I/O on a local directory and on the real fake-gcs-server (the `run_url` fixture)."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from protocol import AlreadyPublished, Command, InvalidInput, WaitTimeout, backends, storage
from protocol.errors import EXIT_INVALID, exit_code_for
from testkit.builders import REPO, command
from testkit.chaos_bucket import lose



def start_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 60) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


def test_publish_once_refuses_a_second_publication(run_url):
    url = storage.join(run_url, "command.json")
    first = command(run_id="first")
    storage.publish_once(url, first)
    with pytest.raises(AlreadyPublished, match="already published"):
        storage.publish_once(url, command(run_id="second"))
    assert storage.read_message(url, Command) == first


RACER = """
    import sys, time
    from protocol import storage, AlreadyPublished
    base, start, tag = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    while time.time() < start:
        time.sleep(0.001)
    for i in range(8):
        try:
            storage.publish_once(storage.join(base, f"race-{i}.json"), tag.encode() * 1000)
            print(f"won {i}")
        except AlreadyPublished:
            print(f"lost {i}")
"""


@pytest.mark.slow
def test_two_processes_racing_to_publish_exactly_one_wins(run_url):
    storage.ensure_writable(run_url)
    start = time.time() + 3  # both processes have imported everything by then
    racers = [start_python(RACER, run_url, str(start), tag) for tag in ("a", "b")]
    outputs = [finish(p).split("\n") for p in racers]
    for i in range(8):
        winners = [tag for tag, out in zip("ab", outputs) if f"won {i}" in out]
        assert len(winners) == 1, f"race-{i}: winners {winners}"
        content = storage.read_bytes(storage.join(run_url, f"race-{i}.json"))
        assert content == winners[0].encode() * 1000


def test_poller_that_listed_a_folder_sees_files_written_later(run_url):
    folder = storage.join(run_url, "epochs")
    storage.write_bytes(storage.join(folder, "000000", "part-00000"), b"x")
    assert storage.listdir(folder) == ["000000"]
    assert not storage.exists(storage.join(folder, "000001", "ready.json"))
    writer = start_python(
        "import sys; from protocol import storage; "
        "storage.publish_once(storage.join(sys.argv[1], '000001', 'ready.json'), b'{}')", folder)
    finish(writer)
    assert storage.listdir(folder) == ["000000", "000001"]
    assert storage.exists(storage.join(folder, "000001", "ready.json"))
    storage.wait_for(storage.join(folder, "000001", "ready.json"), timeout=5, describe="epoch 1")


WRITER = """
    import sys, hashlib
    from protocol import storage
    base = sys.argv[1]
    for i in range(6):
        payload = bytes([i]) * (3 << 20)
        storage.publish_once(storage.join(base, f"big-{i}"), payload)
        for j in range(3):
            storage.overwrite(storage.join(base, "status.json"), bytes([j]) * (1 << 20))
"""


def test_readers_never_see_half_written_files(run_url):
    storage.ensure_writable(run_url)
    writer = start_python(WRITER, run_url)
    seen, status_reads = set(), 0
    while writer.poll() is None or len(seen) < 6:
        for i in range(6):
            url = storage.join(run_url, f"big-{i}")
            if i not in seen and storage.exists(url):
                assert storage.read_bytes(url) == bytes([i]) * (3 << 20), f"big-{i} read partially"
                seen.add(i)
        try:
            status = storage.read_bytes(storage.join(run_url, "status.json"))
        except FileNotFoundError:
            continue
        assert len(status) == 1 << 20 and status == status[:1] * len(status), "torn status.json"
        status_reads += 1
        if writer.poll() is not None and writer.returncode != 0:
            break
    finish(writer)
    assert seen == set(range(6)) and status_reads > 0
    leftovers = [n for n in storage.listdir(run_url) if n.endswith(".tmp")]
    assert leftovers == [], "temporary files left behind"


def test_delete_removes_a_folder_and_ignores_missing_ones(run_url):
    storage.write_bytes(storage.join(run_url, "epochs", "000003", "part-00000"), b"abc")
    storage.write_bytes(storage.join(run_url, "epochs", "000003", "part-00001"), b"def")
    storage.delete(storage.join(run_url, "epochs", "000003"))
    assert storage.listdir(storage.join(run_url, "epochs")) == []
    storage.delete(storage.join(run_url, "epochs", "000003"))


def test_wait_for_times_out_naming_what_it_waited_for(run_url):
    checks = []
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        storage.wait_for(storage.join(run_url, "command.json"), timeout=1.0,
                         describe="command.json from the trainer", check=lambda: checks.append(1))
    assert 1.0 <= time.monotonic() - started < 5
    assert "command.json from the trainer" in str(caught.value) and "waited 1 s" in str(caught.value)
    assert len(checks) >= 3, "the liveness check runs while waiting"


def test_wait_for_stops_when_the_check_raises(run_url):
    def peer_failed():
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError, match="generator failed"):
        storage.wait_for(storage.join(run_url, "x"), timeout=60, describe="x", check=peer_failed)


def test_missing_bucket_is_invalid_input(fake_gcs):
    with pytest.raises(InvalidInput, match="gs://no-such-bucket-xyz/run: cannot write.*does not exist") as caught:
        storage.ensure_writable("gs://no-such-bucket-xyz/run")
    assert exit_code_for(caught.value) == EXIT_INVALID


def test_unwritable_local_folder_is_invalid_input(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InvalidInput, match="cannot write"):
        storage.ensure_writable(str(blocker / "run"))
    with pytest.raises(InvalidInput, match="parent folder .* does not exist"):
        storage.ensure_writable(str(tmp_path / "missing" / "run"))
    storage.ensure_writable(str(tmp_path / "run"))
    assert os.listdir(tmp_path / "run") == [], "the write probe is removed"


def test_unknown_scheme_is_invalid_input():
    with pytest.raises(InvalidInput, match="expected a local path or a gs://"):
        storage.read_bytes("s3://bucket/x")


@pytest.mark.parametrize("url, parent, sibling", [
    ("gs://bucket/runs/r1", "gs://bucket/runs", "gs://bucket/runs/ncf-cache"),
    ("gs://bucket/runs/r1/", "gs://bucket/runs", "gs://bucket/runs/ncf-cache"),
    ("gs://bucket/r1", "gs://bucket", "gs://bucket/ncf-cache"),
    ("gs://bucket", "gs://bucket", "gs://bucket/ncf-cache"),
    ("/data/runs/r1", "/data/runs", "/data/runs/ncf-cache"),
])
def test_parent_and_sibling_of_any_url(url, parent, sibling):
    assert storage.parent(url) == parent
    assert storage.sibling(url, "ncf-cache") == sibling


def test_wait_until_returns_the_predicates_value_or_names_what_it_waited_for():
    calls = []
    assert storage.wait_until(lambda: calls.append(1) or (len(calls) >= 3 and "free"), 5, "a slot") == "free"
    with pytest.raises(WaitTimeout, match=r"waited \d+ s for a free slot; giving up"):
        storage.wait_until(lambda: None, 0.2, "a free slot")


# ---- what a real bucket does (DESIGN.md): lost responses, transient errors, integrity, the class

def test_publish_once_is_idempotent_for_the_same_bytes(run_url, caplog):
    url = storage.join(run_url, "epochs", "000000", "ready.json")
    storage.publish_once(url, b'{"a": 1}')
    with caplog.at_level("INFO", logger="protocol.storage"):
        storage.publish_once(url, b'{"a": 1}')  # a retry that meets its own write
    assert "same bytes" in caplog.text
    with pytest.raises(AlreadyPublished):
        storage.publish_once(url, b'{"a": 2}')
    assert storage.read_bytes(url) == b'{"a": 1}'


def test_publish_once_survives_a_lost_response_through_the_chaos_bucket(chaos_bucket):
    chaos, bucket = chaos_bucket
    code = textwrap.dedent("""
        import sys
        from protocol import storage
        storage.publish_once(sys.argv[1], b"mine")
        print(storage.read_bytes(sys.argv[1]).decode())
    """)
    chaos.add(lose(create_only=True, times=1))
    out = subprocess.run([sys.executable, "-c", code, f"{bucket}/run/command.json"], cwd=REPO, env=chaos.env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "mine" and chaos.counts()["lose"] == 1


@pytest.mark.parametrize("make, transient", [
    (lambda: __import__("gcsfs.retry").retry.HttpError({"code": 503, "message": "x"}), True),
    (lambda: __import__("gcsfs.retry").retry.HttpError({"code": 429, "message": "x"}), True),
    (lambda: __import__("gcsfs.retry").retry.HttpError({"code": 408, "message": "x"}), True),
    (lambda: __import__("gcsfs.retry").retry.HttpError({"code": 400, "message": "x"}), False),
    (lambda: __import__("requests").exceptions.ProxyError(), True),  # gcsfs's 502
    (lambda: __import__("aiohttp").ServerDisconnectedError(), True),
    (lambda: __import__("aiohttp").SocketTimeoutError(), True),
    (lambda: __import__("aiohttp").ClientOSError(104, "Connection reset by peer"), True),
    (lambda: __import__("asyncio").TimeoutError(), True),
    (lambda: ConnectionResetError(104, "reset"), True),
    (lambda: OSError("Forbidden: b/o"), False),  # gcsfs's 403
    (lambda: FileNotFoundError("b/o"), False),
    (lambda: FileExistsError("b/o"), False),  # 412
    (lambda: ValueError("Bad Request"), False),
])
def test_transient_errors_are_told_from_final_ones(make, transient):
    assert storage.is_transient(make()) is transient


def test_retrying_rides_out_transient_errors_until_its_deadline():
    from gcsfs.retry import HttpError

    from protocol import BucketUnavailable

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise HttpError({"code": 503, "message": "backend error"})
        return "ok"
    assert storage.retrying(flaky, "gs://b/x", deadline=10) == "ok" and len(calls) == 3

    def down():
        raise HttpError({"code": 503, "message": "backend error"})
    with pytest.raises(BucketUnavailable, match=r"gs://b/x: the bucket kept failing .*HttpError: backend error, 503") \
            as caught:
        storage.retrying(down, "gs://b/x", deadline=0.3)
    assert exit_code_for(caught.value) == 1
    with storage.polling(), pytest.raises(HttpError):  # a poll: one try, the caller decides
        storage.retrying(down, "gs://b/x", deadline=10)


def test_a_poll_treats_bucket_errors_as_no_news_until_its_patience_runs_out():
    from gcsfs.retry import HttpError

    from protocol import BucketUnavailable

    answers = iter([HttpError({"code": 429, "message": "slow down"})] * 2 + [None, "there"])

    def poll():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer
    assert storage.wait_until(poll, 10, "x", patience=5) == "there"

    def down():
        raise HttpError({"code": 503, "message": "backend error"})
    with pytest.raises(BucketUnavailable, match="waiting for epoch 3: the bucket kept failing.*503") as caught:
        storage.wait_until(down, 60, "epoch 3", patience=0.3)
    assert exit_code_for(caught.value) == 3


def test_every_bucket_request_has_connect_and_read_timeouts(fake_gcs, monkeypatch):
    monkeypatch.setenv("NCF_BUCKET_READ_TIMEOUT_S", "7")
    backend = backends.GCSBackend()
    timeout = backend.fs.requests_timeout
    assert (timeout.sock_connect, timeout.sock_read) == (20.0, 7.0)
    import gcsfs.core
    assert type(backend.fs) is gcsfs.core.GCSFileSystem, "the standard class, in tests as in production"


def test_a_part_whose_crc32c_gcs_reports_differs_is_written_again(gcs_bucket, monkeypatch):
    storage.write_bytes(f"{gcs_bucket}/warm", b"")
    backend = backends.resolve(gcs_bucket)[0]
    real, answers = backend.write, iter([0xDEAD, None, None])
    monkeypatch.setattr(backend, "write", lambda path, data: (real(path, data), next(answers))[1])
    url = f"{gcs_bucket}/epochs/000000/part-00000"
    from protocol import parts
    storage.write_bytes(url, b"payload", crc32c=parts.checksum(b"payload"))  # 1st: bad, 2nd: asks info(): good
    assert storage.read_bytes(url) == b"payload"
    monkeypatch.setattr(backend, "write", lambda path, data: (real(path, data), None)[1])
    monkeypatch.setattr(backend, "crc32c", lambda path: 0xBAD)
    from protocol import BucketUnavailable
    with pytest.raises(BucketUnavailable, match="CRC32C mismatch after 3 uploads"):
        storage.write_bytes(url, b"payload", crc32c=parts.checksum(b"payload"))


def test_a_bucket_whose_metadata_is_forbidden_is_usable_if_it_takes_the_write_probe(chaos_bucket):
    chaos, bucket = chaos_bucket
    from testkit.chaos_bucket import fail

    code = "import sys; from protocol import storage; storage.ensure_writable(sys.argv[1]); print('ok')"
    # Bucket calls have no object name, which no name rule selects: this one takes only them.
    forbidden = fail(403, method="GET")
    forbidden.selects = lambda method, name, create_only: method == "GET" and name is None
    chaos.add(forbidden)
    out = subprocess.run([sys.executable, "-c", code, f"{bucket}/run"], cwd=REPO, env=chaos.env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert chaos.counts()["fail"] >= 1


def test_a_zonal_bucket_is_refused_with_exit_2(gcs_bucket, monkeypatch):
    backend = backends.resolve(gcs_bucket)[0]
    monkeypatch.setattr(backend.fs, "call", lambda *a, **k: {"storageClass": "RAPID", "locationType": "zone",
                                                              "location": "us-central1-a"})
    with pytest.raises(InvalidInput, match="zonal bucket.*RAPID.*Standard bucket") as caught:
        storage.ensure_writable(f"{gcs_bucket}/run")
    assert exit_code_for(caught.value) == EXIT_INVALID


def test_a_folder_tree_goes_up_and_comes_back_on_either_backend(run_url, tmp_path):
    local = tmp_path / "tree"
    (local / "a" / "b").mkdir(parents=True)
    (local / "top.bin").write_bytes(b"1")
    (local / "a" / "b" / "deep.pb").write_bytes(b"22")
    model = storage.join(run_url, "model")
    assert storage.put_tree(str(local), model) == 2
    assert storage.listdir(model) == ["a", "top.bin"]
    back = tmp_path / "back"
    assert storage.get_tree(model, str(back)) == 2
    assert (back / "top.bin").read_bytes() == b"1" and (back / "a" / "b" / "deep.pb").read_bytes() == b"22"


def test_one_outage_clock_times_a_run_of_failures_from_when_the_failing_call_began():
    from protocol.faults import Outage

    outage = Outage(limit=10)
    assert not outage.over() and outage.lasted() == 0
    outage.failed(OSError("first"), began=time.monotonic() - 12)  # gcsfs retried that call for 12 s
    assert outage.over() and outage.failures == 1 and outage.describe() == "OSError: first"
    outage.failed(OSError("second"))  # a later failure keeps the outage's start
    assert outage.lasted() >= 12 and outage.failures == 2 and outage.describe() == "OSError: second"
    assert outage.ended() and not outage.over() and not outage.ended()  # a success ends it, once
