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
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from . import defaults
from .errors import EXIT_OTHER, BucketUnavailable, InvalidInput, describe_error

log = logging.getLogger(__name__)

T = TypeVar("T")


def setting(name: str) -> float:
    """defaults.<name>, or the environment's NCF_<name> (the fault tests shorten the bucket's)."""
    return float(os.environ.get(f"NCF_{name}", getattr(defaults, name)))


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
