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
from .defaults import CLOCK_SKEW_S, HEARTBEAT_INTERVAL_S
from .errors import MessageError, PeerError, PeerFailedFinally, describe_error, exit_code_for
from .faults import Outage, setting
from .layout import RunDir
from .messages import Status

log = logging.getLogger(__name__)


# This process's start (wall clock): a peer's `failed` status from before it is an earlier attempt's.
PROCESS_STARTED = time.time()

# GCS sustains about one write per second to one object (more gets 429 and backoff).
MIN_WRITE_SPACING = 1.0


class Heartbeat:
    """Writes status/<side>.json on every state change and every `interval` seconds.

    Writes never block the work: update() only records the new status; one background thread
    writes the latest one, in order, at least min(MIN_WRITE_SPACING, interval) apart (GCS's
    per-object write rate). A write that fails (or stalls until the request's read timeout) is
    retried with the then-latest status; a missed beat is not fatal, the peer timeout is generous.

    Used as a context manager: an exception leaving the block is recorded as state
    'failed' with its one-line cause and the exit code it will end the process with, so the
    other side knows at once. Exit code 2 (invalid input: Kubernetes never retries it) makes the
    status final and the other side stops at once; any other failure gets --peer-timeout to come
    back (see PeerWatch). On exit the final status is flushed, waiting
    at most HEARTBEAT_FLUSH_S (the bucket may be down).
    """

    def __init__(self, run: RunDir, side: str, interval: float = HEARTBEAT_INTERVAL_S, shard: int = 0,
                 shards: int = 1):
        # A generator of N pods writes one status per pod (shard of shards).
        self.url = run.generator_status(shard, shards) if side == "generator" else run.status(side)
        self.interval = interval
        self.spacing = min(MIN_WRITE_SPACING, interval)
        self.status = Status(side=side, state="starting", run_id=None, epoch=None, epochs_done=0,
                             host=socket.gethostname(), pid=os.getpid(), heartbeat_interval=interval,
                             shard=shard, shards=shards)
        self._cond = threading.Condition()  # guards status, _version, _written, _stop
        self._version = 0  # bumped by every update that asks for a write
        self._written = -1  # the version last written
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"{side}-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        self.flush(timeout=setting("HEARTBEAT_FLUSH_S"))
        return self

    def __exit__(self, kind, error, tb) -> None:
        if error is not None:
            self.update(state="failed", message=describe_error(error, limit=2000), exit_code=exit_code_for(error))
        flush_s = setting("HEARTBEAT_FLUSH_S")
        if not self.flush(timeout=flush_s):
            log.warning("could not write the final status %s within %.0f s", self.url, flush_s)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0)

    def update(self, flush: bool = False, **changes) -> None:
        """Changes fields and returns at once; the state change (or flush) is written as soon as
        its slot comes, anything else on the next beat."""
        with self._cond:
            previous = self.status.state
            self.status = dataclasses.replace(self.status, **changes)
            if self.status.state != previous or flush:
                self._version += 1
                self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Waits until the status as it is now has been written; False if not within timeout."""
        with self._cond:
            self._version += 1
            wanted = self._version
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._written >= wanted, timeout=timeout)

    def _run(self) -> None:
        last_write = float("-inf")
        outage = Outage(float("inf"))  # never fatal: only paces the retries
        while True:
            with self._cond:
                # Sleep until a write is asked for or the beat is due, then keep the spacing.
                pause = min(self.interval, 2.0 ** outage.failures) if outage.failures else self.interval
                due = last_write + pause
                self._cond.wait_for(lambda: self._stop or self._version > self._written,
                                    timeout=max(0.0, due - time.monotonic()))
                if self._stop:
                    return
            pause = last_write + self.spacing - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with self._cond:
                version = self._version
                self.status = dataclasses.replace(self.status, time=time.time())
                status = self.status
            last_write = time.monotonic()
            try:
                with storage.polling():  # one try: the next attempt writes the then-latest status
                    storage.overwrite(self.url, status)
            except Exception as error:  # noqa: BLE001 - never fatal; retried with the latest status
                outage.failed(error)
                log.warning("could not write heartbeat %s: %s", self.url, outage.describe())
                continue
            outage.ended()
            with self._cond:
                self._written = max(self._written, version)
                self._cond.notify_all()


class PeerWatch:
    """Raises PeerError from `check()` when the other side failed, went silent or never came.

    A `failed` status with exit code 2 that the peer wrote while this process ran is final
    (invalid input: Kubernetes never restarts it): PeerFailedFinally (exit 2) at once, naming the
    peer and its cause. Any other `failed` status is not final while Kubernetes may restart its
    writer:
    - one the peer wrote while this process ran (its time, by the peer's clock, is no more than
      CLOCK_SKEW_S before this process started) gives the peer --peer-timeout from when this
      watcher first saw it to come back (a fresh heartbeat of a new attempt: another pid, host
      or time), then PeerError "the <peer> failed: <its message>";
    - one written before this process started is an earlier attempt's: it counts as the peer
      not having started yet (--start-timeout, as its replacement may wait for a node).
    Skew: between nodes that keep NTP time it is well under a second; 30 s leaves room for a
    bad clock. Misjudging a fresh failure as old only waits longer (--start-timeout); misjudging
    an old one as fresh costs one restart of this side (exit 3 after --peer-timeout).
    A heartbeat the bucket will not let us read (transient errors) is no news; after
    --peer-timeout of such errors, PeerError names the URL and the error.
    """

    def __init__(self, run: RunDir, peer: str, start_timeout: float, peer_timeout: float,
                 min_poll: float = 1.0, process_started: float | None = None):
        self.url = run.status(peer)
        self.peer, self.start_timeout, self.peer_timeout = peer, start_timeout, peer_timeout
        self.min_poll = min_poll
        self.process_started = PROCESS_STARTED if process_started is None else process_started
        self.started = time.monotonic()
        self.last: Status | None = None
        self.last_change = self.started
        self._last_read = float("-inf")
        self._unreadable = Outage(peer_timeout)  # the bucket will not let us read the heartbeat

    def check(self) -> Status | None:
        """Reads the peer's heartbeat (at most every min_poll s) and raises if it is not alive."""
        now = time.monotonic()
        if now - self._last_read >= self.min_poll:
            self._last_read = now
            status, ok = self._read()
            now = time.monotonic()
            if ok:
                self._observe(status, now)
        return self._judge(now)

    def _read(self) -> tuple[Status | None, bool]:
        """(status or None if there is none, whether the bucket answered)."""
        attempt = time.monotonic()
        try:
            with storage.polling():
                status = storage.read_message(self.url, Status)
        except FileNotFoundError:
            status = None
        except MessageError as error:  # e.g. written by an older version; treat as unseen
            log.warning("ignoring unreadable heartbeat: %s", error)
            status = None
        except Exception as error:
            if not storage.is_transient(error):
                raise
            self._unreadable.failed(error, began=attempt)  # since the failing call began
            log.warning("cannot read %s: %s (no news yet)", self.url, self._unreadable.describe())
            return None, False
        if self._unreadable.ended():
            # The bucket is back: the peer's writes failed as ours did, and its next one may
            # still sit in gcsfs's backoff. Its silence counts from now, not from before.
            self.last_change = time.monotonic()
        return status, True

    def _observe(self, status: Status | None, now: float) -> None:
        if status is not None and (self.last is None or status != self.last):
            self.last, self.last_change = status, now

    def _judge(self, now: float) -> Status | None:
        if self._unreadable.lasted(now) > self.peer_timeout:
            raise PeerError(f"cannot read the {self.peer}'s heartbeat {self.url}: the bucket kept failing for "
                            f"{self._unreadable.lasted(now):.0f} s (--peer-timeout {self.peer_timeout:.0f} s): "
                            f"{self._unreadable.describe()}")
        last = self.last
        if last is not None and last.state == "failed" and last.time < self.process_started - CLOCK_SKEW_S:
            if now - self.started > self.start_timeout:
                raise PeerError(f"the {self.peer} failed before this process started and no new attempt came "
                                f"within {self.start_timeout:.0f} s (--start-timeout): {last.message or 'no message'}")
            return None  # an earlier attempt's: as if not started yet
        if last is None:
            if now - self.started > self.start_timeout:
                raise PeerError(f"the {self.peer} never started: no heartbeat at {self.url} "
                                f"within {self.start_timeout:.0f} s (--start-timeout)")
            return None
        silent = now - self.last_change
        if last.final:
            raise PeerFailedFinally(self.peer, last.exit_code, last.message)
        if last.state == "failed":
            if silent > self.peer_timeout:
                raise PeerError(f"the {self.peer} failed: {last.message or 'no message'} (no new attempt within "
                                f"{self.peer_timeout:.0f} s, --peer-timeout)")
            return last
        if last.state != "done" and silent > self.peer_timeout:
            raise PeerError(f"the {self.peer} went silent: its heartbeat {self.url} has not changed "
                            f"for {silent:.0f} s (--peer-timeout {self.peer_timeout:.0f} s)")
        return last
