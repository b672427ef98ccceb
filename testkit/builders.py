"""Builders every test shares: the repository root, the run id, commands, statuses, metrics.

One factory per message, with the contract's own defaults; each test passes what it cares
about. Readers use protocol's own (protocol.runfiles.read_metrics) where one exists.
"""

from __future__ import annotations

import time
from pathlib import Path

from protocol import Command, DatasetSpec, EpochMetrics, RunDir, Status, storage
from protocol.runfiles import read_metrics

REPO = Path(__file__).resolve().parent.parent
RUN_ID = "test-run"


def command(dataset: str = "synthetic-small", ratings: str | None = None, run_id: str = RUN_ID,
            **settings) -> Command:
    """A Command with the contract's defaults except what `settings` names."""
    return Command(run_id=run_id, dataset=DatasetSpec(name=dataset, ratings=ratings), **settings)


def publish_command(run_url: str, cmd: Command) -> Command:
    storage.publish_once(RunDir(run_url).command, cmd)
    return cmd


def write_status(run_url: str, side: str, state: str, *, run_id: str | None = RUN_ID, epochs_done: int = 0,
                 epoch: int | None = None, age_s: float = 0.0, message: str | None = None,
                 examples_per_s: float | None = None, heartbeat_interval: float = 10.0) -> Status:
    """status/<side>.json as that side's heartbeat writes it, `age_s` seconds old."""
    status = Status(side=side, state=state, run_id=run_id, epoch=epoch, epochs_done=epochs_done,
                    time=time.time() - age_s, host=f"ncf-{side}-0", pid=1, examples_per_s=examples_per_s,
                    message=message, heartbeat_interval=heartbeat_interval)
    storage.overwrite(RunDir(run_url).status(side), status)
    return status


def read_status(run_url: str, side: str) -> Status | None:
    try:
        return storage.read_message(RunDir(run_url).status(side), Status)
    except FileNotFoundError:
        return None


def metrics(run_url: str) -> list[EpochMetrics]:
    """metrics.jsonl as every reader sees it (one record per epoch); fails on a bad line."""
    records, problems = read_metrics(RunDir(run_url).metrics)
    assert not problems, problems
    return records


def metrics_line_epochs(run_url: str) -> list[int]:
    """The epoch of every line of metrics.jsonl, repeats included (read_metrics folds them)."""
    try:
        text = storage.read_bytes(RunDir(run_url).metrics).decode()
    except FileNotFoundError:
        return []
    return [EpochMetrics.from_json(line).epoch for line in text.splitlines() if line.strip()]


def history(epochs: int) -> list[EpochMetrics]:
    """Metrics of epochs 0..epochs-1 (HR@10 0.5), as a checkpoint's pointer lists them."""
    return [EpochMetrics(epoch=e, hr_at_10=0.5, ndcg_at_10=0.3, loss=0.6, examples_per_s=1.0, data_wait_s=0.0,
                         train_s=1.0, eval_s=1.0, time=1.0) for e in range(epochs)]
