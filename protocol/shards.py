"""Watching a generator of N pods (DESIGN.md "Past one pod"): one heartbeat per pod.

A one-pod generator writes status/generator.json; pod i of N > 1 writes
status/generator-<i>.json (RunDir.generator_status), each stamped with shard and shards.
The trainer watches every one of them with a PeerWatch, so each pod gets --peer-timeout to
come back after a failure (its Indexed Job restarts it) and --start-timeout to appear.
"""

from __future__ import annotations

import re
import threading
import time

from . import storage
from .layout import RunDir
from .messages import Status
from .peer import PeerWatch

_SHARD_STATUS = re.compile(r"^generator-(\d+)\.json$")


def generator_shards(run: RunDir) -> list[int]:
    """The shards of a generator of N > 1 pods that have written a heartbeat ([] for one pod)."""
    names = storage.listdir(storage.parent(run.status("generator")))
    return sorted(int(m.group(1)) for m in map(_SHARD_STATUS.match, names) if m)


class GeneratorWatch:
    """PeerWatch.check for every generator pod. Until a pod of N > 1 shows up it watches
    status/generator.json (so a generator that never comes is reported after --start-timeout);
    from then on status/generator-<i>.json for i below the shards any of them reports, the
    ones not written yet included (a pod still waiting for a node is 'not started yet')."""

    def __init__(self, run: RunDir, start_timeout: float, peer_timeout: float, min_poll: float = 1.0):
        self.run, self.start_timeout, self.peer_timeout, self.min_poll = run, start_timeout, peer_timeout, min_poll
        self.watches: dict[str, PeerWatch] = {"generator": self._watch("generator")}
        self._listed = float("-inf")
        self._lock = threading.Lock()  # the trainer's loop and its prefetch thread both check

    def check(self) -> list[Status | None]:
        """Each pod's last heartbeat (None: not started yet); raises PeerError as PeerWatch does."""
        with self._lock:
            now = time.monotonic()
            if now - self._listed >= self.min_poll:
                self._listed = now
                self._discover()
            statuses = [watch.check() for watch in self.watches.values()]
            if self._expand():  # a heartbeat just read tells of pods not watched yet
                statuses = [watch.check() for watch in self.watches.values()]
            return statuses

    def all_done(self, run_id: str) -> bool:
        """Whether every pod reported done for run_id at its last heartbeat."""
        with self._lock:
            return all(w.last is not None and w.last.state == "done" and w.last.run_id == run_id
                       for w in self.watches.values())

    def _discover(self) -> None:
        try:
            with storage.polling():  # the bucket failing is no news: the watches judge their own reads
                found = generator_shards(self.run)
        except Exception as error:  # noqa: BLE001 - a transient error here only delays discovery
            if not storage.is_transient(error):
                raise
            return
        if found:  # status/generator-<i>.json: a generator of several pods
            self._watch_pods(max(found) + 1)

    def _expand(self) -> bool:
        """Watches every pod the heartbeats read so far count; True if that added any."""
        shards = max((w.last.shards for w in self.watches.values() if w.last is not None), default=1)
        return shards > 1 and self._watch_pods(shards)

    def _watch_pods(self, shards: int) -> bool:
        self.watches.pop("generator", None)
        added = [f"generator-{shard}" for shard in range(shards) if f"generator-{shard}" not in self.watches]
        self.watches.update({peer: self._watch(peer) for peer in added})
        return bool(added)

    def _watch(self, peer: str) -> PeerWatch:
        return PeerWatch(self.run, peer, self.start_timeout, self.peer_timeout, self.min_poll)
