"""Writes of large objects (parts) with many in flight, where that pays.

To a bucket, throughput comes from parallel requests (one connection moves 60-200 MB/s), so
writes go to `concurrency` threads and overlap the caller's next work. To a local disk a write
is a copy into the page cache: on another thread it would cost a handoff and a second trip
of every byte through memory (they left the writing core's cache) and overlap nothing, so it
is done at once, in the caller's thread. The backend says which (`queue_writes`); callers
treat both alike: every submit returns a Future.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from .backends import resolve

T = TypeVar("T")


class Uploads:
    def __init__(self, concurrency: int):
        self.concurrency = concurrency
        self._pool: ThreadPoolExecutor | None = None  # started by the first queued write

    def submit(self, url: str, write: Callable[..., T], *args) -> Future[T]:
        """write(*args), which writes url: queued where the backend of url gains from it, else run now."""
        if resolve(url)[0].queue_writes:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="upload")
            return self._pool.submit(write, *args)
        done: Future[T] = Future()
        try:
            done.set_result(write(*args))
        except BaseException as error:  # as a pool would: the Future carries it to result()
            done.set_exception(error)
        return done

    def shutdown(self) -> None:
        """Waits for the queued writes, dropping those not started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
