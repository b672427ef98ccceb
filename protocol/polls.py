"""Polling for the other side's files: the one production poll loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from . import faults
from .errors import EXIT_PEER, BucketUnavailable, WaitTimeout
from .faults import Outage, is_transient, polling

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
    a transient bucket error is no news yet, until errors have lasted `patience` s (default:
    Patience.poll, the Job's --peer-timeout), then BucketUnavailable with exit code 3, naming it.
    """
    started = time.monotonic()
    outage = Outage(faults.patience().poll if patience is None else patience)
    interval = 0.05
    while True:
        attempt = time.monotonic()
        try:
            with polling():
                outcome = predicate()
            if outcome:
                return outcome
            outage.ended()
        except Exception as error:
            if not is_transient(error):
                raise
            outage.failed(error, began=attempt)  # since the failing call began (gcsfs retried it)
            if outage.over():
                raise BucketUnavailable(f"waiting for {describe}: the bucket kept failing for "
                                        f"{outage.lasted():.0f} s: {outage.describe()}", EXIT_PEER) from error
            log.warning("waiting for %s: %s (transient: no news yet)", describe, outage.describe())
        if check is not None:
            with polling():
                check()
        waited = time.monotonic() - started
        if waited >= timeout:
            raise WaitTimeout(f"waited {waited:.0f} s for {describe}; giving up")
        time.sleep(min(interval, max(timeout - waited, 0.01)))
        interval = min(interval * 2, max_interval)
