"""Bucket I/O: one API over local paths and gs:// URLs (fsspec / gcsfs).

Callers pass URLs and never branch on the scheme: every module reads, writes, lists and polls
the bucket through these functions. Its parts, one idea each: `urls` (what a URL points at), `backends` (local disk and
GCS), `faults` (which errors pass by themselves, and for how long each caller waits them out),
`polls` (the poll loop). What a real bucket does (DESIGN.md, "What a real bucket does"):
- Transient errors are retried here for BUCKET_DEADLINE_S, then BucketUnavailable (exit 1);
  polls treat them as no news (see protocol.faults).
- A lost response: a create-only retry meets its own object (412). publish_once reads it back;
  the same bytes are success.
- Stalls: every request has a connect and a read timeout (BUCKET_CONNECT_TIMEOUT_S,
  BUCKET_READ_TIMEOUT_S through aiohttp.ClientTimeout), so gcsfs retries a stalled request.
- Integrity: write_bytes(..., crc32c=) compares the CRC32C GCS reports for the new object with
  the one computed, and rewrites it on a mismatch. Local files are not re-read: the bytes never
  cross a network, and reading every part back would double the disk traffic for nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import posixpath
import socket
from collections.abc import Callable
from typing import TypeVar

from .backends import Backend, GCSBackend, resolve
from .errors import AlreadyPublished, BucketUnavailable, ForeignRun, InvalidInput, describe_error
from .faults import configure, is_transient, polling, retrying, setting
from .messages import Message, describe_differences, differences
from .polls import wait_until
from .urls import absolute, join, parent, sibling

__all__ = [  # the facade: what callers use, wherever it lives
    "absolute", "join", "parent", "sibling", "describe_error", "is_transient", "polling", "retrying", "setting",
    "read_bytes", "read_message", "write_bytes", "publish_once", "publish_or_match", "overwrite", "exists", "listdir", "delete",
    "ensure_writable", "wait_until", "wait_for", "configure", "put_tree", "get_tree",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
T = TypeVar("T")
Payload = bytes | Message


# ----------------------------------------------------------------------------- operations
def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """The object's bytes, or bytes start..end-1 of it (a ranged read: a file's header)."""
    backend, path = resolve(url)
    return retrying(lambda: backend.fs.cat_file(path, start=start, end=end), url)


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
    backend, path = resolve(url)
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        reported = _writing(backend, lambda: backend.write(path, data), url)
        if crc32c is None or not isinstance(backend, GCSBackend):
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
    backend, path = resolve(url)
    data = _as_bytes(payload)
    try:
        _writing(backend, lambda: backend.create_only(path, data), url)
    except FileExistsError:
        if read_bytes(url) != data:
            raise AlreadyPublished(f"{url} is already published") from None
        log.info("%s was already there with the same bytes (a retried create whose first answer was lost): "
                 "published", url)


def publish_or_match(url: str, message: M, ours_as: str, ignore: tuple[str, ...] = ()) -> M:
    """Publishes message create-only, or returns the one already there if it matches (`matching`:
    an earlier attempt of this run published it)."""
    try:
        publish_once(url, message)
        return message
    except AlreadyPublished:
        pass  # somebody published first: compare with theirs
    earlier = matching(url, message, ours_as, ignore)
    log.info("%s was already published (by an earlier attempt) and matches", url)
    return earlier


def matching(url: str, message: M, ours_as: str, ignore: tuple[str, ...] = ()) -> M:
    """The message at url if it matches ours in every field but `ignore`; if not, ForeignRun (exit 2)
    names each difference (`ours_as`: where our values come from, e.g. "the flags")."""
    theirs_message = read_message(url, type(message))
    ours, theirs = message.to_dict(), theirs_message.to_dict()
    changed = differences(ours, theirs, ignore)
    if changed:
        run = getattr(theirs_message, "run_id", None)
        raise ForeignRun(f"{url} (run {run})" if run else url,
                         describe_differences(ours, theirs, changed, ours_as, "the file"))
    return theirs_message


def overwrite(url: str, payload: Payload) -> None:
    """Atomic replace (heartbeats): readers see the old or the new document, never a mix."""
    backend, path = resolve(url)
    data = _as_bytes(payload)
    _writing(backend, lambda: backend.replace(path, data), url)


def exists(url: str) -> bool:
    backend, path = resolve(url)
    return retrying(lambda: backend.fs.exists(path), url)


def listdir(url: str) -> list[str]:
    """Names (not paths) directly under url, sorted; [] if the folder does not exist."""
    backend, path = resolve(url)

    def ls() -> list[str]:
        try:
            return backend.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
    entries = retrying(ls, url)
    return sorted(posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != path.rstrip("/"))


def delete(url: str) -> None:
    """Removes a file or a folder with everything in it; a missing one is not an error."""
    backend, path = resolve(url)

    def rm() -> None:
        try:
            backend.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
    _writing(backend, rm, url)


def ensure_writable(url: str) -> None:
    """Fails fast, with exit code 2, when the run directory cannot be written.

    A missing bucket would otherwise surface later as retries. A denied write (403) is waited
    out for Patience.permission (a fresh grant takes minutes), then PermissionDenied. The write
    probe decides: a bucket that takes a write is usable whatever its metadata GET says (a
    service account with roles/storage.objectUser may not read bucket metadata). Only a bucket
    whose metadata does say zonal is refused (see protocol.backends).
    """
    backend = resolve(url)[0]
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


def wait_for(url: str, timeout: float, describe: str, check: Callable[[], None] | None = None) -> None:
    """Polls until url exists (see wait_until)."""
    wait_until(lambda: exists(url), timeout, f"{describe} ({url})", check)


def put_tree(local_dir: str, url: str) -> int:
    """Copies every file under the local folder to url (local or gs://); returns how many."""
    count = 0
    for folder, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                write_bytes(join(url, *os.path.relpath(path, local_dir).split(os.sep)), f.read())
            count += 1
    return count


def get_tree(url: str, local_dir: str) -> int:
    """Copies every file under url (local or gs://) into the local folder; returns how many."""
    backend, root = resolve(url)
    count = 0
    for path in retrying(lambda: backend.fs.find(root), url):
        target = os.path.join(local_dir, *posixpath.relpath(path, root).split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(retrying(lambda: backend.fs.cat_file(path), url))
        count += 1
    return count


def _writing(backend: Backend, action: Callable[[], T], url: str) -> T:
    """A write: transient errors retried, and a 403 waited out while permissions may be spreading."""
    return retrying(action, url, write=True, principal=backend.principal)


def _as_bytes(payload: Payload) -> bytes:
    return payload.to_json() if isinstance(payload, Message) else bytes(payload)
