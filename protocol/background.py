"""One background writer: bucket writes that a loop must not wait for, done in order.

    with BackgroundWriter("trainer-writes") as writes:
        writes.submit(storage.overwrite, url, data)   # returns at once
        ...
        writes.flush()                                # waits; raises the first error, if any

Tasks run one at a time on one thread, in the order they were submitted, so a delete
submitted after a write happens after it (DESIGN.md "Flow": metrics, then status, then
the epoch's delete). A failed task (after protocol.storage's own retries) is not lost:
its error (the original exception, so its exit code holds) is raised by the next submit()
or flush() in the caller's thread, and the tasks
submitted after it are skipped (their order would no longer hold). Thread-safe: another
thread (e.g. a checkpoint upload that has landed) may submit too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .errors import describe_error

log = logging.getLogger(__name__)


class BackgroundWriter:
    def __init__(self, name: str = "background-writer"):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._pending: list[Future] = []
        self._error: tuple[str, BaseException] | None = None
        self.busy_s = 0.0  # seconds spent writing (what the loop would have waited)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if error is None:
            self.close()
        else:  # already failing: finish what was queued (e.g. the failed status), report nothing new
            self.close(raise_errors=False)

    def submit(self, function: Callable, *args, what: str | None = None, **kwargs) -> Future:
        """Queues function(*args, **kwargs); raises a previous task's error, if one failed."""
        self._raise_error()
        what = what or getattr(function, "__name__", "a write")

        def task():
            with self._lock:
                if self._error is not None:
                    return None  # an earlier task failed: keep the order, skip the rest
            started = time.monotonic()
            try:
                return function(*args, **kwargs)
            except BaseException as error:
                with self._lock:
                    if self._error is None:
                        self._error = (what, error)
                log.warning("background write failed (%s): %s", what, describe_error(error))
                raise
            finally:
                self.busy_s += time.monotonic() - started

        future = self._pool.submit(task)
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()] + [future]
        return future

    def flush(self) -> None:
        """Waits until every task submitted so far has run; raises the first error."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            try:
                future.result()
            except BaseException:
                pass  # reported below, once, as the first error
        self._raise_error()

    def close(self, raise_errors: bool = True) -> None:
        try:
            if raise_errors:
                self.flush()
        finally:
            self._pool.shutdown(wait=True)

    def _raise_error(self) -> None:
        with self._lock:
            error = self._error
        if error is not None:
            log.error("a background write failed earlier (%s)", error[0])
            raise error[1]
