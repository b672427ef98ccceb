"""Bucket I/O: one API over local paths and gs:// URLs (fsspec / gcsfs).

Callers pass URLs and never branch on the scheme; the two places where local disks and
GCS really differ (create-only publishing and atomic overwrite) live in the two small
backends below. Listings and existence checks never come from a cache: pollers must see
files that other processes write (gcsfs caches listings forever by default).
"""

from __future__ import annotations

import ctypes
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from .errors import AlreadyPublished, InvalidInput, WaitTimeout, first_line
from .messages import Message

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


def read_bytes(url: str) -> bytes:
    backend, path = _resolve(url)
    return backend.fs.cat_file(path)


def read_message(url: str, cls: type[M], run_id: str | None = None) -> M:
    """Reads and validates a message; a bad document raises MessageError naming the URL.

    With run_id: the document must belong to that run, else ForeignRun (exit code 2).
    """
    message = cls.from_json(read_bytes(url), source=url)
    return message if run_id is None else message.belongs_to(run_id, url)


def write_bytes(url: str, data: bytes | ctypes.Array) -> None:
    """Plain write, for large parts: nobody reads a part that no ready.json lists."""
    backend, path = _resolve(url)
    backend.fs.pipe_file(path, data)


def publish_once(url: str, payload: Payload) -> None:
    """Create-only, atomic: readers see all of it or nothing; raises AlreadyPublished if taken."""
    backend, path = _resolve(url)
    try:
        backend.create_only(path, _as_bytes(payload))
    except FileExistsError:
        raise AlreadyPublished(f"{url} is already published") from None


def overwrite(url: str, payload: Payload) -> None:
    """Atomic replace (heartbeats): readers see the old or the new document, never a mix."""
    backend, path = _resolve(url)
    backend.replace(path, _as_bytes(payload))


def exists(url: str) -> bool:
    backend, path = _resolve(url)
    return backend.fs.exists(path)


def listdir(url: str) -> list[str]:
    """Names (not paths) directly under url, sorted; [] if the folder does not exist."""
    backend, path = _resolve(url)
    try:
        entries = backend.fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != path.rstrip("/"))


def delete(url: str) -> None:
    """Removes a file or a folder with everything in it; a missing one is not an error."""
    backend, path = _resolve(url)
    try:
        backend.fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def ensure_writable(url: str) -> None:
    """Fails fast, with exit code 2, when the run directory cannot be written.

    A missing bucket or a denied write would otherwise surface later as retries.
    """
    probe = join(url, f".write-probe-{socket.gethostname()}-{os.getpid()}")
    try:
        _resolve(url)[0].prepare(url)
        write_bytes(probe, b"ok")
        delete(probe)
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{url}: cannot write to the run directory ({first_line(error)})") from None


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    describe: str,
    check: Callable[[], None] | None = None,
    max_interval: float = 2.0,
) -> T:
    """Polls predicate until it returns something true, backing off from 0.05 s to max_interval.

    `check` runs on every poll and may raise (the other side failed or went silent).
    Raises WaitTimeout naming what it waited for and for how long.
    """
    started = time.monotonic()
    interval = 0.05
    while not (outcome := predicate()):
        if check is not None:
            check()
        waited = time.monotonic() - started
        if waited >= timeout:
            raise WaitTimeout(f"waited {waited:.0f} s for {describe}; giving up")
        time.sleep(min(interval, max(timeout - waited, 0.01)))
        interval = min(interval * 2, max_interval)
    return outcome


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
        import gcsfs

        token = "anon" if os.environ.get("STORAGE_EMULATOR_HOST") else None
        self.fs = gcsfs.GCSFileSystem(token=token, use_listings_cache=False, skip_instance_cache=True)

    def prepare(self, url: str) -> None:
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        if not self.fs.exists(bucket):
            raise FileNotFoundError(f"bucket gs://{bucket} does not exist")

    def create_only(self, path: str, data: bytes) -> None:
        # ifGenerationMatch=0: GCS rejects the write if the object exists (412).
        self.fs.pipe_file(path, data, mode="create")

    def replace(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)  # one object write is atomic on GCS


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
