"""Polling for the other side's files: the one production poll loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import EXIT_PEER, BucketUnavailable, WaitTimeout, describe_error
from .faults import is_transient, polling, setting

log = logging.getLogger(__name__)

T = TypeVar("T")


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
