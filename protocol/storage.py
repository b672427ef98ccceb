"""Bucket I/O: one API over local paths and gs:// URLs (fsspec / gcsfs).

Callers pass URLs and never branch on the scheme; the two places where local disks and
GCS really differ (create-only publishing and atomic overwrite) live in the two small
backends below. Listings and existence checks never come from a cache: pollers must see
files that other processes write (gcsfs caches listings forever by default).

What a real bucket does (DESIGN.md, "What a real bucket does"), handled here once:
- Transient errors (`is_transient`: HTTP 408, 429, 5xx, connection resets and refusals,
  timeouts; as gcsfs raises them after its own ~33 s of retries: gcsfs.retry.HttpError with
  that code, requests' ProxyError for 502, aiohttp ClientConnectionError / ServerTimeoutError,
  asyncio / fsspec timeouts, ConnectionError, google-auth TransportError) are retried by every
  function below for BUCKET_DEADLINE_S (120 s), then BucketUnavailable (exit 1) names the URL
  and the last error. Inside `polling()` (wait_until's predicate and check, the heartbeat
  thread, PeerWatch) a call is tried once and its transient error goes to the caller, for whom
  it is "no news yet": wait_until gives up after `patience` (exit 3), PeerWatch after
  --peer-timeout.
- A lost response: a create-only retry meets its own object (412). publish_once reads it back;
  the same bytes are success.
- Stalls: every request has a connect and a read timeout (BUCKET_CONNECT_TIMEOUT_S,
  BUCKET_READ_TIMEOUT_S through aiohttp.ClientTimeout), so gcsfs retries a stalled request.
- Integrity: write_bytes(..., crc32c=) compares the CRC32C GCS reports for the new object with
  the one computed, and rewrites it on a mismatch. Local files are not re-read: the bytes never
  cross a network, and reading every part back would double the disk traffic for nothing.

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
import contextlib
import ctypes
import errno
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

from . import defaults
from .errors import EXIT_OTHER, EXIT_PEER, AlreadyPublished, BucketUnavailable, InvalidInput, WaitTimeout, first_line
from .messages import Message

log = logging.getLogger(__name__)

if os.environ.get("STORAGE_EMULATOR_HOST"):
    # Without this, gcsfs probes for gRPC on import and every call waits about 60 s.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

M = TypeVar("M", bound=Message)
T = TypeVar("T")
Payload = bytes | Message


def join(url: str, *names: str) -> str:
    return posixpath.join(url.rstrip("/"), *names) if "://" in url else os.path.join(url, *names)


def absolute(url: str) -> str:
    """The URL with a local path made absolute (a child process may run elsewhere)."""
    return url if "://" in url else os.path.abspath(url)


def parent(url: str) -> str:
    """The folder that holds url: gs://b/runs/x -> gs://b/runs; a bucket's root is its own parent."""
    if "://" not in url:
        return os.path.dirname(os.path.abspath(url))
    scheme, path = url.split("://", 1)
    path = path.rstrip("/")
    return f"{scheme}://{posixpath.dirname(path) or path}"


def sibling(url: str, name: str) -> str:
    """`name` in the folder that holds url."""
    return join(parent(url), name)


def setting(name: str) -> float:
    """defaults.<name>, or the environment's NCF_<name> (the fault tests shorten the bucket's)."""
    return float(os.environ.get(f"NCF_{name}", getattr(defaults, name)))


# ----------------------------------------------------------------------------- transient errors
_TRANSIENT_CODES = {408, 429, 500, 502, 503, 504}
_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN}


def is_transient(error: BaseException) -> bool:
    """Whether a bucket error may pass by itself: retry it (until a deadline) rather than fail."""
    if isinstance(error, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                          NotADirectoryError, InvalidInput)):
        return False
    code = getattr(error, "code", None) or getattr(error, "status", None)  # HttpError / aiohttp
    code = int(code) if isinstance(code, int) or (isinstance(code, str) and code.isdigit()) else None
    if code is not None and 400 <= code < 600:
        return code in _TRANSIENT_CODES
    if isinstance(error, (TimeoutError, ConnectionError)):  # asyncio/fsspec/aiohttp timeouts, resets
        return True
    if getattr(error, "errno", None) in _TRANSIENT_ERRNOS:
        return True
    module = type(error).__module__
    if module.startswith("aiohttp"):  # ClientConnectionError, ServerDisconnectedError, ClientPayloadError
        return True
    if module.startswith("requests"):  # gcsfs maps 502 to requests' ProxyError
        return True
    if module.startswith("google.auth") and type(error).__name__ in ("TransportError", "RefreshError"):
        return True
    if type(error).__name__ == "ChecksumError":  # gcsfs: the download was damaged in flight
        return True
    return False


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error)}"


_local = threading.local()


@contextlib.contextmanager
def polling() -> Iterator[None]:
    """Within it, calls in this thread try once (gcsfs's own retries aside) and raise transient
    errors to the caller, who treats them as no news yet and keeps its own deadline."""
    outer = getattr(_local, "polling", False)
    _local.polling = True
    try:
        yield
    finally:
        _local.polling = outer


def retrying(action: Callable[[], T], url: str, deadline: float | None = None, exit_code: int = EXIT_OTHER) -> T:
    """action(), retrying transient errors for `deadline` s (BUCKET_DEADLINE_S) from the first one;
    then BucketUnavailable naming url and the last error. Inside polling(): one try."""
    if getattr(_local, "polling", False):
        return action()
    deadline = setting("BUCKET_DEADLINE_S") if deadline is None else deadline
    first_failure, pause = None, 0.5
    while True:
        try:
            return action()
        except Exception as error:
            if not is_transient(error):
                raise
            now = time.monotonic()
            first_failure = first_failure or now
            if now - first_failure >= deadline:
                raise BucketUnavailable(f"{url}: the bucket kept failing for {now - first_failure:.0f} s: "
                                        f"{describe_error(error)}", exit_code) from error
            log.warning("%s: %s; retrying (transient, for up to %.0f s)", url, describe_error(error), deadline)
            time.sleep(min(pause, max(0.0, first_failure + deadline - now)))
            pause = min(pause * 2, 10.0)


# ----------------------------------------------------------------------------- operations
def read_bytes(url: str) -> bytes:
    backend, path = _resolve(url)
    return retrying(lambda: backend.fs.cat_file(path), url)


def read_message(url: str, cls: type[M], run_id: str | None = None) -> M:
    """Reads and validates a message; a bad document raises MessageError naming the URL.

    With run_id: the document must belong to that run, else ForeignRun (exit code 2).
    """
    message = cls.from_json(read_bytes(url), source=url)
    return message if run_id is None else message.belongs_to(run_id, url)


# Rewrites of an object whose CRC32C, as GCS reports it, differs from the one computed.
UPLOAD_ATTEMPTS = 3


def write_bytes(url: str, data: bytes | ctypes.Array, crc32c: int | None = None) -> None:
    """Plain write, for large parts: nobody reads a part that no ready.json lists.

    With crc32c (of data): on GCS the object's CRC32C as the server computed it must match, else
    the object is written again (UPLOAD_ATTEMPTS in all), then BucketUnavailable (exit 1).
    """
    backend, path = _resolve(url)
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        reported = retrying(lambda: backend.write(path, data), url)
        if crc32c is None or not isinstance(backend, _GCSBackend):
            return
        if reported is None:
            reported = retrying(lambda: backend.crc32c(path), url)
        if reported == crc32c:
            return
        log.warning("%s: GCS reports CRC32C %#010x, the bytes sent have %#010x; writing it again (%d/%d)",
                    url, reported, crc32c, attempt, UPLOAD_ATTEMPTS)
    raise BucketUnavailable(f"{url}: CRC32C mismatch after {UPLOAD_ATTEMPTS} uploads (GCS reports {reported:#010x}, "
                            f"the bytes have {crc32c:#010x})")


def publish_once(url: str, payload: Payload) -> None:
    """Create-only, atomic: readers see all of it or nothing; raises AlreadyPublished if taken.

    Idempotent: an object already there with the same bytes is ours (a retry after a lost
    response meets its own write), so that is success; different bytes are AlreadyPublished.
    """
    backend, path = _resolve(url)
    data = _as_bytes(payload)
    try:
        retrying(lambda: backend.create_only(path, data), url)
    except FileExistsError:
        if read_bytes(url) != data:
            raise AlreadyPublished(f"{url} is already published") from None
        log.info("%s was already there with the same bytes (a retried create whose first answer was lost): "
                 "published", url)


def overwrite(url: str, payload: Payload) -> None:
    """Atomic replace (heartbeats): readers see the old or the new document, never a mix."""
    backend, path = _resolve(url)
    data = _as_bytes(payload)
    retrying(lambda: backend.replace(path, data), url)


def exists(url: str) -> bool:
    backend, path = _resolve(url)
    return retrying(lambda: backend.fs.exists(path), url)


def listdir(url: str) -> list[str]:
    """Names (not paths) directly under url, sorted; [] if the folder does not exist."""
    backend, path = _resolve(url)

    def ls() -> list[str]:
        try:
            return backend.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
    entries = retrying(ls, url)
    return sorted(posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != path.rstrip("/"))


def delete(url: str) -> None:
    """Removes a file or a folder with everything in it; a missing one is not an error."""
    backend, path = _resolve(url)

    def rm() -> None:
        try:
            backend.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
    retrying(rm, url)


def ensure_writable(url: str) -> None:
    """Fails fast, with exit code 2, when the run directory cannot be written.

    A missing bucket or a denied write would otherwise surface later as retries. The write
    probe decides: a bucket that takes a write is usable whatever its metadata GET says (a
    service account with roles/storage.objectUser may not read bucket metadata). Only a bucket
    whose metadata does say zonal is refused (see the module docstring).
    """
    backend = _resolve(url)[0]
    probe = join(url, f".write-probe-{socket.gethostname()}-{os.getpid()}")
    try:
        retrying(lambda: backend.prepare(url), url)
        write_bytes(probe, b"ok")
        delete(probe)
    except (OSError, ValueError) as error:
        if isinstance(error, BucketUnavailable) or is_transient(error):
            raise
        raise InvalidInput(f"{url}: cannot write to the run directory ({backend.explain(url, error)})") from None
    backend.refuse_unsupported(url)


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    describe: str,
    check: Callable[[], None] | None = None,
    max_interval: float = 2.0,
    patience: float | None = None,
) -> T:
    """Polls predicate until it returns something true, backing off from 0.05 s to max_interval.

    `check` runs on every poll and may raise (the other side failed or went silent).
    Raises WaitTimeout naming what it waited for and for how long. Both run inside polling():
    a transient bucket error is no news yet, until errors have lasted `patience` s
    (default: set_poll_patience's, which each Job sets to its --peer-timeout, else
    BUCKET_DEADLINE_S), then BucketUnavailable with exit code 3, naming the error.
    """
    started = time.monotonic()
    patience = (_poll_patience or setting("BUCKET_DEADLINE_S")) if patience is None else patience
    interval = 0.05
    failing_since: float | None = None
    while True:
        attempt = time.monotonic()
        try:
            with polling():
                outcome = predicate()
            if outcome:
                return outcome
            failing_since = None
        except Exception as error:
            if not is_transient(error):
                raise
            now = time.monotonic()
            failing_since = failing_since or attempt  # since the failing call began (gcsfs retried it)
            if now - failing_since >= patience:
                raise BucketUnavailable(f"waiting for {describe}: the bucket kept failing for "
                                        f"{now - failing_since:.0f} s: {describe_error(error)}", EXIT_PEER) from error
            log.warning("waiting for %s: %s (transient: no news yet)", describe, describe_error(error))
        if check is not None:
            with polling():
                check()
        waited = time.monotonic() - started
        if waited >= timeout:
            raise WaitTimeout(f"waited {waited:.0f} s for {describe}; giving up")
        time.sleep(min(interval, max(timeout - waited, 0.01)))
        interval = min(interval * 2, max_interval)


_poll_patience: float | None = None


def set_poll_patience(seconds: float) -> None:
    """How long polls in this process treat bucket errors as no news (each Job: --peer-timeout)."""
    global _poll_patience
    _poll_patience = seconds


def wait_for(url: str, timeout: float, describe: str, check: Callable[[], None] | None = None) -> None:
    """Polls until url exists (see wait_until)."""
    wait_until(lambda: exists(url), timeout, f"{describe} ({url})", check)


def _as_bytes(payload: Payload) -> bytes:
    return payload.to_json() if isinstance(payload, Message) else bytes(payload)


class _LocalBackend:
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


class _GCSBackend:
    def __init__(self) -> None:
        import aiohttp
        from gcsfs.core import GCSFileSystem  # not gcsfs.GCSFileSystem: see the module docstring

        token = "anon" if os.environ.get("STORAGE_EMULATOR_HOST") else None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=setting("BUCKET_CONNECT_TIMEOUT_S"),
                                        sock_read=setting("BUCKET_READ_TIMEOUT_S"))
        self.fs = GCSFileSystem(token=token, use_listings_cache=False, skip_instance_cache=True,
                                requests_timeout=timeout)

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
        bucket = _bucket(url)
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
        bucket = _bucket(url)
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


def _bucket(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def _crc32c_of(resource: dict) -> int | None:
    """GCS's crc32c field (base64 of the big-endian 32-bit value) as an integer."""
    value = resource.get("crc32c")
    return int.from_bytes(base64.b64decode(value), "big") if value else None


_backends: dict[str, _LocalBackend | _GCSBackend] = {}


def _resolve(url: str) -> tuple[_LocalBackend | _GCSBackend, str]:
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme not in ("file", "gs"):
        raise InvalidInput(f"{url}: expected a local path or a gs://bucket/prefix URL")
    if scheme not in _backends:
        _backends[scheme] = _LocalBackend() if scheme == "file" else _GCSBackend()
    backend = _backends[scheme]
    path = url.split("://", 1)[1] if scheme == "gs" else os.path.abspath(url.removeprefix("file://"))
    return backend, path
