"""Writes a run directory the way the two Jobs do, message by message, through protocol.storage.

The status tool and the report are tested against this, not against the generator and
trainer themselves: the contract (DESIGN.md) is what they read, whoever wrote it.
"""

from __future__ import annotations

import time

from testkit.builders import RUN_ID, command, write_status
from protocol import Command, DatasetMeta, EpochMetrics, PartInfo, Ready, Result, RunDir
from protocol import storage


def write_command(run: RunDir, epochs: int = 20, buffer_epochs: int = 3) -> Command:
    cmd = command(epochs=epochs, buffer_epochs=buffer_epochs, seed=7)
    storage.publish_once(run.command, cmd)
    storage.publish_once(run.meta, DatasetMeta(run_id=RUN_ID, dataset="synthetic-small", fingerprint="abc123",
                                               num_users=6040, num_items=3706, num_ratings=1000209,
                                               num_train=994169))
    return cmd


def write_epoch(run: RunDir, epoch: int, ready: bool = True) -> None:
    folder = run.epoch_dir(epoch)
    data = b"x" * 64
    storage.write_bytes(storage.join(folder, RunDir.part_name(0)), data)
    if ready:
        storage.publish_once(RunDir.ready(folder), Ready(
            run_id=RUN_ID, kind="train", epoch=epoch, num_examples=8,
            parts=[PartInfo(name=RunDir.part_name(0), num_examples=8, size=len(data), crc32c=0)]))


def metrics(epochs: int, start_time: float | None = None, epoch_s: float = 30.0) -> list[EpochMetrics]:
    """Plausible learning curves: HR@10 rises towards ~0.63, loss falls."""
    start_time = time.time() - epochs * epoch_s if start_time is None else start_time
    records = []
    for e in range(epochs):
        hr = 0.63 - 0.25 * 0.6 ** e
        records.append(EpochMetrics(
            epoch=e, hr_at_10=hr, ndcg_at_10=hr * 0.58, loss=0.12 + 0.25 * 0.7 ** e,
            examples_per_s=2_400_000 + 10_000 * e, data_wait_s=4.0 if e == 0 else 0.2 * (e % 3),
            train_s=epoch_s - 6.0, eval_s=2.0, time=start_time + (e + 1) * epoch_s))
    return records


def write_metrics(run: RunDir, records: list[EpochMetrics], extra: bytes = b"") -> None:
    storage.overwrite(run.metrics, b"".join(r.to_line() for r in records) + extra)


def write_result(run: RunDir, records: list[EpochMetrics], target_hr: float | None = 0.635) -> Result:
    best = max(records, key=lambda r: r.hr_at_10)
    result = Result(run_id=RUN_ID, dataset="synthetic-small", epochs_trained=len(records), best_epoch=best.epoch,
                    best_hr_at_10=best.hr_at_10, best_ndcg_at_10=best.ndcg_at_10,
                    last_hr_at_10=records[-1].hr_at_10, last_ndcg_at_10=records[-1].ndcg_at_10,
                    target_hr=target_hr, reached_target=target_hr is not None and best.hr_at_10 >= target_hr,
                    wall_s=records[-1].time - records[0].time + 30.0)
    storage.publish_once(run.result, result)
    return result


def mid_run(run: RunDir, trained: int = 5, epochs: int = 20) -> None:
    """A run in full swing: 5 epochs trained, 3 more ready in the buffer, one being written."""
    write_command(run, epochs=epochs)
    write_status(run.url, "generator", "generating", epochs_done=trained + 3, epoch=trained + 3, age_s=4,
                 message="waiting for a free buffer slot")
    write_status(run.url, "trainer", "training", epochs_done=trained, epoch=trained, age_s=12,
                 examples_per_s=2_450_000)
    for epoch in range(trained, trained + 3):
        write_epoch(run, epoch)
    write_epoch(run, trained + 3, ready=False)
    write_metrics(run, metrics(trained))
