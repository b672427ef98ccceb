"""Reads everything ncf-status shows from a run directory, without writing to it.

Each piece (command, heartbeats, metrics, result) may be missing, because the run has not
got that far, or unreadable, because a writer is older or newer than this reader. Neither
stops the others from being shown: a missing piece is None, an unreadable one is None plus
a line in `problems`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from protocol import Command, DatasetMeta, EpochMetrics, InvalidInput, MessageError, Result, RunDir, Status
from protocol import storage
from protocol.runfiles import epoch_folders, read_metrics
from protocol.shards import generator_shards
from protocol.errors import first_line
from protocol.messages import SIDES, Message

FINAL_STATES = ("done", "failed")
# A live side rewrites its heartbeat every Status.heartbeat_interval s: six missed beats is stale.
STALE_AFTER_BEATS = 6


@dataclass
class EpochFiles:
    """What epochs/ holds right now: the trainer deletes an epoch's folder once consumed."""

    ready: list[int] = field(default_factory=list)  # folders with a ready.json
    in_progress: list[int] = field(default_factory=list)  # folders still being written


@dataclass
class Snapshot:
    url: str
    read_at: float
    command: Command | None = None
    meta: DatasetMeta | None = None
    # By side; a generator of N > 1 pods shows as generator-0 .. generator-<N-1> (one heartbeat each).
    status: dict[str, Status | None] = field(default_factory=lambda: dict.fromkeys(SIDES))
    epochs: EpochFiles = field(default_factory=EpochFiles)
    metrics: list[EpochMetrics] = field(default_factory=list)
    result: Result | None = None
    report: str | None = None  # URL of report.png once the trainer has drawn it
    problems: list[str] = field(default_factory=list)

    # ---- facts derived from what was read -------------------------------------------

    @property
    def epochs_total(self) -> int | None:
        return self.command.epochs if self.command else None

    @property
    def generators(self) -> list[str]:
        """The keys of the generator's heartbeats in status: one per pod."""
        return [side for side in self.status if side.startswith("generator")]

    @property
    def epochs_generated(self) -> int:
        # The generator's own count (its slowest pod's), or what is visible when heartbeats lag behind.
        made = min((s.epochs_done if s else 0) for s in map(self.status.get, self.generators))
        seen = max(self.epochs.ready, default=-1) + 1
        return max(made, seen)

    @property
    def epochs_consumed(self) -> int:
        status = self.status["trainer"]
        trained = self.metrics[-1].epoch + 1 if self.metrics else 0
        return max(status.epochs_done if status else 0, trained)

    @property
    def buffered(self) -> list[int]:
        """Ready epochs the trainer has not consumed: what fills the generator's buffer."""
        return [e for e in self.epochs.ready if e >= self.epochs_consumed]

    @property
    def phase(self) -> str:
        """The whole run in one word: failed, done, running or not started."""
        states = {side: s.state if s else None for side, s in self.status.items()}
        if "failed" in states.values():
            return "failed"
        if self.result is not None or states["trainer"] == "done":
            return "done"
        if self.command is None and not any(states.values()):
            return "not started"
        return "running"

    def heartbeat_age(self, side: str) -> float | None:
        status = self.status[side]
        # Judged by this machine's clock against the writer's: skew shows up here as is.
        return max(self.read_at - status.time, 0.0) if status else None

    def is_stale(self, side: str) -> bool:
        status, age = self.status[side], self.heartbeat_age(side)
        return (age is not None and status.state not in FINAL_STATES
                and age > STALE_AFTER_BEATS * status.heartbeat_interval)

    @property
    def mean_epoch_s(self) -> float | None:
        """Wall-clock time per epoch, as the trainer has experienced it (waits included)."""
        if len(self.metrics) >= 2:
            first, last = self.metrics[0], self.metrics[-1]
            return (last.time - first.time) / (last.epoch - first.epoch or 1)
        if self.metrics:
            only = self.metrics[0]
            return only.data_wait_s + only.train_s + only.eval_s
        return None

    @property
    def epochs_left(self) -> int | None:
        if self.epochs_total is None:
            return None
        return max(self.epochs_total - self.epochs_consumed, 0)

    @property
    def eta_s(self) -> float | None:
        """Seconds until the last epoch, if the run keeps its pace (an early stop is sooner)."""
        if self.phase in FINAL_STATES:
            return 0.0 if self.phase == "done" else None
        if self.mean_epoch_s is None or self.epochs_left is None:
            return None
        return self.epochs_left * self.mean_epoch_s

    def to_dict(self) -> dict[str, Any]:
        """The same facts as the screen, for scripts (ncf-status --json)."""
        def message(m: Message | None) -> dict[str, Any] | None:
            return m.to_dict() if m is not None else None

        sides = {}
        for side in self.status:
            sides[side] = message(self.status[side])
            if sides[side] is not None:
                sides[side]["heartbeat_age_s"] = round(self.heartbeat_age(side), 1)
                sides[side]["stale"] = self.is_stale(side)
        return {
            "run_dir": self.url,
            "read_at": self.read_at,
            "phase": self.phase,
            "command": message(self.command),
            "dataset": message(self.meta),
            **sides,
            "epochs": {
                "total": self.epochs_total,
                "generated": self.epochs_generated,
                "ready": self.epochs.ready,
                "in_progress": self.epochs.in_progress,
                "consumed": self.epochs_consumed,
                "buffered": len(self.buffered),
                "buffer_epochs": self.command.buffer_epochs if self.command else None,
            },
            "metrics": [m.to_dict() for m in self.metrics],
            "mean_epoch_s": self.mean_epoch_s,
            "eta_s": self.eta_s,
            "result": message(self.result),
            "report": self.report,
            "problems": self.problems,
        }


def check_run_dir(run: RunDir) -> None:
    """Raises InvalidInput (exit code 2) when there is no run directory at all at run.url.

    On GCS a prefix exists only through the objects under it, so an empty prefix and a
    mistyped one are the same thing: nothing to show.
    """
    try:
        found = storage.exists(run.url) or bool(storage.listdir(run.url))
    except FileNotFoundError:
        found = False
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{run.url}: cannot read the run directory ({first_line(error)})") from None
    if not found:
        raise InvalidInput(f"{run.url}: no such run directory")


def read_snapshot(run: RunDir, now: float | None = None) -> Snapshot:
    snapshot = Snapshot(url=run.url, read_at=time.time() if now is None else now)
    snapshot.command = _read_optional(run.command, Command, snapshot.problems)
    snapshot.meta = _read_optional(run.meta, DatasetMeta, snapshot.problems)
    snapshot.status = {**_read_generator_pods(run, snapshot.problems),
                       "trainer": _read_optional(run.status("trainer"), Status, snapshot.problems)}
    snapshot.epochs = _read_epoch_files(run)
    snapshot.metrics, problems = read_metrics(run.metrics)
    snapshot.problems.extend(problems)
    snapshot.result = _read_optional(run.result, Result, snapshot.problems)
    snapshot.report = run.report if storage.exists(run.report) else None
    return snapshot


def _read_optional(url: str, cls: type[Message], problems: list[str]) -> Any:
    try:
        return storage.read_message(url, cls)
    except FileNotFoundError:
        return None
    except MessageError as error:
        problems.append(str(error))
        return None


def _read_generator_pods(run: RunDir, problems: list[str]) -> dict[str, Status | None]:
    """status/generator.json, or each pod's status/generator-<i>.json: for i below the shards
    any of them reports (a pod that has not written one yet shows as None)."""
    shards = generator_shards(run)
    if not shards:
        return {"generator": _read_optional(run.status("generator"), Status, problems)}
    found = {f"generator-{shard}": _read_optional(run.status(f"generator-{shard}"), Status, problems)
             for shard in shards}
    count = max([shard + 1 for shard in shards] + [s.shards for s in found.values() if s is not None])
    return {f"generator-{shard}": found.get(f"generator-{shard}") for shard in range(count)}


def _read_epoch_files(run: RunDir) -> EpochFiles:
    files = EpochFiles()
    for epoch, ready in sorted(epoch_folders(run).items()):
        (files.ready if ready else files.in_progress).append(epoch)
    return files
