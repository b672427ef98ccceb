"""protocol.uploads: part writes queued on threads for a bucket, done at once on local disk."""

import threading

import pytest

from protocol import storage
from protocol.uploads import Uploads


def write_recording_thread(url: str, threads: list) -> str:
    threads.append(threading.current_thread().name)
    storage.write_bytes(url, b"part")
    return url


def test_writes_are_queued_on_threads_for_a_bucket_and_done_at_once_on_local_disk(run_url):
    uploads, threads = Uploads(4), []
    url = storage.join(run_url, "part-00000")
    future = uploads.submit(url, write_recording_thread, url, threads)
    assert future.result(timeout=60) == url and storage.read_bytes(url) == b"part"
    on_a_bucket = run_url.startswith("gs://")
    assert threads == ["upload_0" if on_a_bucket else threading.current_thread().name]
    uploads.shutdown()


def test_an_error_of_a_local_write_reaches_result(tmp_path):
    def fail():
        raise OSError("disk full")
    future = Uploads(2).submit(str(tmp_path / "part-00000"), fail)
    with pytest.raises(OSError, match="disk full"):
        future.result()
