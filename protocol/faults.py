"""What a real bucket does wrong, and how long each caller puts up with it (DESIGN.md,
"What a real bucket does").

- Transient errors (`is_transient`: HTTP 408, 429, 5xx, connection resets and refusals,
  timeouts; as gcsfs raises them after its own ~33 s of retries: gcsfs.retry.HttpError with
  that code, requests' ProxyError for 502, aiohttp ClientConnectionError / ServerTimeoutError,
  asyncio / fsspec timeouts, ConnectionError, google-auth TransportError) are retried by every
  storage operation for BUCKET_DEADLINE_S (120 s), then BucketUnavailable (exit 1) names the URL
  and the last error. Inside `polling()` (wait_until's predicate and check, the heartbeat
  thread, PeerWatch) a call is tried once and its transient error goes to the caller, for whom
  it is "no news yet": wait_until gives up after `patience` (exit 3), PeerWatch after
  --peer-timeout.
- A 403 on a write before this process's first write has landed is a fresh IAM grant still
  spreading (it takes 2-7+ minutes): retried for --permission-wait, then PermissionDenied (exit 2)
  naming the URL, the principal when known, and the role it needs. After a write has landed, a
  403 is raised as it comes (exit 1: Kubernetes restarts the Job, as for any unexpected error).
- Every one of these waits keeps time with one `Outage` clock: it starts when the first failing
  call began, ends with the first success, and says when it has lasted its limit.
How long each wait is comes from `Patience`, configured once per process from the Job's flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from . import defaults, urls
from .errors import EXIT_OTHER, BucketUnavailable, InvalidInput, PermissionDenied, describe_error

log = logging.getLogger(__name__)

T = TypeVar("T")


def setting(name: str) -> float:
    """defaults.<name>, or the environment's NCF_<name> (the fault tests shorten the bucket's)."""
    return float(os.environ.get(f"NCF_{name}", getattr(defaults, name)))


@dataclasses.dataclass(frozen=True)
class Patience:
    """How long this process waits out each kind of bucket fault, in seconds."""

    bucket: float  # a read or write the Job cannot go on without (BUCKET_DEADLINE_S)
    poll: float  # polls for the other side's files: the Job's --peer-timeout
    permission: float  # a 403 before the first write landed: the Job's --permission-wait (tools: 0)


def default_patience() -> Patience:
    deadline = setting("BUCKET_DEADLINE_S")
    return Patience(bucket=deadline, poll=deadline, permission=0.0)


_patience: Patience | None = None


def configure(**seconds: float) -> Patience:
    """Sets this process's patience once, from its flags (e.g. poll=--peer-timeout,
    permission=--permission-wait); the rest keep their defaults."""
    global _patience
    _patience = dataclasses.replace(default_patience(), **seconds)
    return _patience


def patience() -> Patience:
    return _patience or default_patience()


class Outage:
    """One run of failures, timed by one monotonic clock: from when the first failing call began
    to now, until a success ends it. Used by retries, polls, the peer watch and the heartbeat."""

    def __init__(self, limit: float):
        self.limit = limit
        self.since: float | None = None
        self.failures = 0
        self.error: BaseException | None = None

    def failed(self, error: BaseException, began: float | None = None) -> None:
        """Records a failure of a call that began at `began` (gcsfs may have retried it for a while)."""
        self.since = self.since or (time.monotonic() if began is None else began)
        self.failures += 1
        self.error = error

    def ended(self) -> bool:
        """Records a success; whether it ended an outage."""
        was = self.since is not None
        self.since, self.failures, self.error = None, 0, None
        return was

    def lasted(self, now: float | None = None) -> float:
        return 0.0 if self.since is None else (time.monotonic() if now is None else now) - self.since

    def over(self, now: float | None = None) -> bool:
        """Whether failures have lasted the limit."""
        return self.since is not None and self.lasted(now) >= self.limit

    def left(self) -> float:
        return max(0.0, self.limit - self.lasted())

    def describe(self) -> str:
        return describe_error(self.error) if self.error is not None else "no error"


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


def is_forbidden(error: BaseException) -> bool:
    """HTTP 403 from GCS (gcsfs raises OSError("Forbidden: <path>\n<GCS's message>"))."""
    return getattr(error, "code", None) == 403 or (type(error) is OSError and str(error).startswith("Forbidden"))


ROLE = "roles/storage.objectUser"
_PRINCIPAL = re.compile(r"^(\S+@\S+|Anonymous caller) does not have", re.MULTILINE)
_write_landed = threading.Event()  # a write succeeded: from then on, a 403 is not waited out


def retrying(action: Callable[[], T], url: str, deadline: float | None = None, exit_code: int = EXIT_OTHER,
             write: bool = False, principal: Callable[[], str | None] = lambda: None) -> T:
    """action(), retrying transient errors for `deadline` s (Patience.bucket) from the first one;
    then BucketUnavailable naming url and the last error. A write's 403 before any write landed is
    retried for Patience.permission, then PermissionDenied (exit 2). Inside polling(): one try."""
    if getattr(_local, "polling", False):
        return action()
    outage = Outage(patience().bucket if deadline is None else deadline)
    # A 403 is waited out only on a write before any write landed (the grant may still be spreading).
    denied = Outage(patience().permission) if write and not _write_landed.is_set() else None
    pause = 0.5
    while True:
        try:
            result = action()
        except Exception as error:
            clock = _clock_for(error, outage, denied)
            clock.failed(error)
            if clock.over():
                raise _gave_up(clock, url, exit_code, principal) from error
            log.warning("%s: %s; retrying (%s, for up to %.0f s)", url, describe_error(error),
                        "transient" if clock is outage else f"no permission yet: a fresh {ROLE} grant takes "
                                                            "minutes to apply", clock.limit)
            time.sleep(min(pause, clock.left()))
            pause = min(pause * 2, 10.0)
            continue
        if write:
            _write_landed.set()
        return result


def _clock_for(error: Exception, outage: Outage, denied: Outage | None) -> Outage:
    """The clock that waits this error out; raises it where none does."""
    if is_transient(error):
        return outage
    if denied is not None and is_forbidden(error):
        return denied
    raise error


def _gave_up(clock: Outage, url: str, exit_code: int, principal: Callable[[], str | None]) -> Exception:
    if not is_forbidden(clock.error):
        return BucketUnavailable(f"{url}: the bucket kept failing for {clock.lasted():.0f} s: {clock.describe()}",
                                 exit_code)
    found = _PRINCIPAL.search(str(clock.error))
    who = principal() or (found.group(1) if found else "this Job's identity (principal unknown)")
    waited = f" for {clock.lasted():.0f} s (--permission-wait {clock.limit:.0f} s)" if clock.limit else ""
    return PermissionDenied(f"{url}: permission denied (HTTP 403){waited}: {who} needs {ROLE} on "
                            f"gs://{urls.bucket(url)}")
