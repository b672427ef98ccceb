"""The two places where local disks and GCS really differ, behind one small interface.

Each backend has `fs` (an fsspec filesystem for reads, listings, deletes) and: prepare (before
the write probe), write (plain), create_only (atomic, fails if the name exists), replace
(atomic overwrite), explain (why a write failed) and refuse_unsupported. `resolve(url)` picks
the backend, one instance per scheme and process. Listings and existence checks never come from
a cache: pollers must see files that other processes write (gcsfs caches listings forever by
default).

One gcsfs class, tested as it runs: `gcsfs.core.GCSFileSystem`, in production and in tests.
`import gcsfs; gcsfs.GCSFileSystem` is ExtendedGcsFileSystem unless
GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false, and that class first asks the gRPC Storage Control API
for the bucket's layout: fake-gcs-server has no such API (each call then waits about 60 s), so
the extended class can never run under the tests. Its extra behaviour only matters for zonal
(Rapid) buckets, whose writes go over gRPC; the JSON API it falls back to serves standard and
hierarchical-namespace buckets alike, and nothing here renames folders. So a zonal bucket is
refused by ensure_writable (exit 2, with the reason) instead of being half supported.
"""

from __future__ import annotations

import base64
import ctypes
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from . import urls
from .errors import InvalidInput, describe_error, first_line
from .faults import Outage, polling, setting

log = logging.getLogger(__name__)

T = TypeVar("T")

if os.environ.get("STORAGE_EMULATOR_HOST"):
    # Without this, gcsfs probes for gRPC on import and every call waits about 60 s.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


class LocalBackend:
    # A write is a copy into the page cache, done best at once by the thread that holds the
    # bytes in its cache; queued on other threads it overlaps nothing (protocol.uploads).
    queue_writes = False

    def __init__(self) -> None:
        from fsspec.implementations.local import LocalFileSystem

        self.fs = LocalFileSystem(auto_mkdir=True)

    def prepare(self, url: str) -> None:
        # Create the run folder, but only inside an existing parent: a typo in the
        # path should fail, not build a new tree somewhere unexpected.
        parent = os.path.dirname(os.path.abspath(url))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"parent folder {parent} does not exist")
        os.makedirs(url, exist_ok=True)

    def write(self, path: str, data: bytes | ctypes.Array) -> None:
        self.fs.pipe_file(path, data)

    @staticmethod
    def principal() -> None:
        return None  # a local disk's permissions are the process's user's

    @staticmethod
    def explain(url: str, error: BaseException) -> str:
        return first_line(error)

    def refuse_unsupported(self, url: str) -> None:
        pass

    def create_only(self, path: str, data: bytes) -> None:
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists
        finally:
            os.unlink(tmp)
        _fsync_dir(os.path.dirname(path))

    def replace(self, path: str, data: bytes) -> None:
        tmp = self._write_temp(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        _fsync_dir(os.path.dirname(path))

    @staticmethod
    def _write_temp(path: str, data: bytes) -> str:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GCSBackend:
    # One connection moves 60-200 MB/s: throughput comes from many writes in flight (protocol.uploads).
    queue_writes = True

    def __init__(self) -> None:
        import aiohttp
        from gcsfs.core import GCSFileSystem  # not gcsfs.GCSFileSystem: see the module docstring

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=setting("BUCKET_CONNECT_TIMEOUT_S"),
                                        sock_read=setting("BUCKET_READ_TIMEOUT_S"))
        self.fs = _with_credentials(lambda token: GCSFileSystem(
            token=token, use_listings_cache=False, skip_instance_cache=True, requests_timeout=timeout))

    def principal(self) -> str | None:
        """The service account this process acts as, when its credentials say (GKE's metadata
        server names it once a token was fetched)."""
        email = getattr(self.fs.credentials.credentials, "service_account_email", None)
        return email if email and email != "default" else None

    def prepare(self, url: str) -> None:
        pass  # the write probe decides (ensure_writable)

    def write(self, path: str, data: bytes | ctypes.Array) -> int | None:
        """Writes; returns the CRC32C GCS reports for the new object, if its answer carried one."""
        answer = self.fs.pipe_file(path, data)
        return _crc32c_of(answer) if isinstance(answer, dict) else None

    def crc32c(self, path: str) -> int | None:
        return _crc32c_of(self.fs.info(path))

    def explain(self, url: str, error: BaseException) -> str:
        """Why a write failed: a missing bucket says so (the usual typo)."""
        bucket = urls.bucket(url)
        try:
            with polling():
                self.fs.call("GET", "b/{}", bucket, json_out=True)
        except FileNotFoundError:
            return f"bucket gs://{bucket} does not exist"
        except Exception:  # noqa: BLE001 - no metadata access is fine: report the write's error
            pass
        return first_line(error)

    def refuse_unsupported(self, url: str) -> None:
        """Exit 2 for a zonal (Rapid) bucket; metadata we may not read is no reason to refuse."""
        bucket = urls.bucket(url)
        try:
            with polling():
                meta = self.fs.call("GET", "b/{}", bucket, json_out=True)
        except Exception as error:  # noqa: BLE001 - e.g. 403 without storage.buckets.get: the probe decided
            log.info("gs://%s: bucket metadata not readable (%s); the write probe passed", bucket, describe_error(error))
            return
        if meta.get("storageClass") == "RAPID" or meta.get("locationType") == "zone":
            raise InvalidInput(f"gs://{bucket} is a zonal bucket (storage class {meta.get('storageClass')}, location "
                               f"{meta.get('location')}): not supported, use a Standard bucket in the nodes' region")

    def create_only(self, path: str, data: bytes) -> None:
        # ifGenerationMatch=0: GCS rejects the write if the object exists (412).
        self.fs.pipe_file(path, data, mode="create")

    def replace(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)  # one object write is atomic on GCS


def _with_credentials(connect: Callable[[str], T]) -> T:
    """connect(token): Google's default credentials, never anonymous (gcsfs's token=None falls
    back to anonymous when the metadata server is not ready yet, which then fails with 401s).
    Missing credentials are waited for CREDENTIALS_WAIT_S (a pod's metadata server may come up
    after the container), then InvalidInput (exit 2) says what to set up. Only the emulator, which
    takes no credentials, is anonymous."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return connect("anon")
    from google.auth.exceptions import DefaultCredentialsError

    missing = Outage(setting("CREDENTIALS_WAIT_S"))
    while True:
        try:
            return connect("google_default")
        except DefaultCredentialsError as error:
            missing.failed(error)
            if missing.over():
                raise InvalidInput(
                    f"no Google credentials after {missing.lasted():.0f} s ({first_line(error)}): on GKE, give the "
                    "Kubernetes ServiceAccount a Google identity with Workload Identity; elsewhere set "
                    "GOOGLE_APPLICATION_CREDENTIALS") from None
            log.warning("no Google credentials yet (%s); waiting up to %.0f s", first_line(error), missing.limit)
            time.sleep(min(1.0, missing.left()))


def _crc32c_of(resource: dict) -> int | None:
    """GCS's crc32c field (base64 of the big-endian 32-bit value) as an integer."""
    value = resource.get("crc32c")
    return int.from_bytes(base64.b64decode(value), "big") if value else None


Backend = LocalBackend | GCSBackend
_backends: dict[str, Backend] = {}


def resolve(url: str) -> tuple[Backend, str]:
    """The backend for url's scheme and the path it addresses."""
    scheme, path = urls.location(url)
    if scheme not in _backends:
        _backends[scheme] = LocalBackend() if scheme == "file" else GCSBackend()
    return _backends[scheme], path
