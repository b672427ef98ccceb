"""Heartbeats and watching the other side (DESIGN.md "Restarts, failures, timeouts").

Each side keeps status/<side>.json fresh. A watcher judges the other side's heartbeat by
its own clock: it notes when the document last changed, so clock skew between two nodes
never makes a live peer look dead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time

from . import storage
from .defaults import HEARTBEAT_INTERVAL_S
from .errors import MessageError, PeerError
from .layout import RunDir
from .messages import Status

log = logging.getLogger(__name__)


# GCS sustains about one write per second to one object (more gets 429 and backoff).
MIN_WRITE_SPACING = 1.0


class Heartbeat:
    """Writes status/<side>.json on every state change and every `interval` seconds.

    Writes are at least min(MIN_WRITE_SPACING, interval) apart: a state change that comes
    sooner waits for its slot (epochs shorter than a second would otherwise hit GCS's
    per-object rate limit).

    Used as a context manager: an exception leaving the block is recorded as state
    'failed' with its message, so the other side can stop at once instead of timing out.
    """

    def __init__(self, run: RunDir, side: str, interval: float = HEARTBEAT_INTERVAL_S):
        self.url = run.status(side)
        self.interval = interval
        self.status = Status(side=side, state="starting", run_id=None, epoch=None, epochs_done=0,
                             host=socket.gethostname(), pid=os.getpid(), heartbeat_interval=interval)
        self._lock = threading.Lock()  # guards self.status
        self._write_lock = threading.Lock()  # one write at a time, in order, spaced
        self._last_write = float("-inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"{side}-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._write()
        self._thread.start()
        return self

    def __exit__(self, kind, error, tb) -> None:
        self._stop.set()
        self._thread.join()
        if error is not None:
            self.update(state="failed", message=f"{type(error).__name__}: {error}".splitlines()[0][:2000])

    def update(self, flush: bool = False, **changes) -> None:
        """Changes fields; writes at once when the state changes (or flush), else on the next beat."""
        with self._lock:
            previous = self.status.state
            self.status = dataclasses.replace(self.status, **changes)
            state_changed = self.status.state != previous
        if state_changed or flush:
            self._write()

    def _write(self) -> None:
        with self._write_lock:
            wait = self._last_write + min(MIN_WRITE_SPACING, self.interval) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self._lock:
                self.status = dataclasses.replace(self.status, time=time.time())
                status = self.status
            try:
                storage.overwrite(self.url, status)
            except Exception as error:  # a missed beat is not fatal; the peer timeout is generous
                log.warning("could not write heartbeat %s: %s", self.url, error)
            self._last_write = time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._write()


class PeerWatch:
    """Raises PeerError from `check()` when the other side failed, went silent or never came."""

    def __init__(self, run: RunDir, peer: str, start_timeout: float, peer_timeout: float,
                 min_poll: float = 1.0):
        self.url = run.status(peer)
        self.peer, self.start_timeout, self.peer_timeout = peer, start_timeout, peer_timeout
        self.min_poll = min_poll
        self.started = time.monotonic()
        self.last: Status | None = None
        self.last_change = self.started
        self._last_read = float("-inf")

    def check(self) -> Status | None:
        """Reads the peer's heartbeat (at most every min_poll s) and raises if it is not alive."""
        now = time.monotonic()
        if now - self._last_read >= self.min_poll:
            self._last_read = now
            self._observe(self._read(), now)
        return self._judge(now)

    def _read(self) -> Status | None:
        try:
            return storage.read_message(self.url, Status)
        except FileNotFoundError:
            return None
        except MessageError as error:  # e.g. written by an older version; treat as unseen
            log.warning("ignoring unreadable heartbeat: %s", error)
            return None

    def _observe(self, status: Status | None, now: float) -> None:
        if status is not None and (self.last is None or status != self.last):
            self.last, self.last_change = status, now

    def _judge(self, now: float) -> Status | None:
        if self.last is None:
            if now - self.started > self.start_timeout:
                raise PeerError(f"the {self.peer} never started: no heartbeat at {self.url} "
                                f"within {self.start_timeout:.0f} s (--start-timeout)")
            return None
        if self.last.state == "failed":
            raise PeerError(f"the {self.peer} failed: {self.last.message or 'no message'}")
        silent = now - self.last_change
        if self.last.state != "done" and silent > self.peer_timeout:
            raise PeerError(f"the {self.peer} went silent: its heartbeat {self.url} has not changed "
                            f"for {silent:.0f} s (--peer-timeout {self.peer_timeout:.0f} s)")
        return self.last
