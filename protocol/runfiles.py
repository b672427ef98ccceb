"""Reading run files that several readers share (ncf-status, the report, the Jobs)."""

from __future__ import annotations

from . import storage
from .errors import MessageError
from .layout import RunDir
from .messages import EpochMetrics


def read_metrics(url: str) -> tuple[list[EpochMetrics], list[str]]:
    """metrics.jsonl in epoch order, and one message per line that could not be read.

    A missing file is no metrics yet. A bad line is skipped (and reported) so it cannot
    hide the others; an epoch written twice (a resumed trainer) counts once, last line wins.
    """
    try:
        text = storage.read_bytes(url).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return [], []
    by_epoch: dict[int, EpochMetrics] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = EpochMetrics.from_json(line, source=f"{url} line {number}")
        except MessageError as error:
            problems.append(str(error))
            continue
        by_epoch[record.epoch] = record
    return [by_epoch[e] for e in sorted(by_epoch)], problems


def write_metrics(url: str, records: list[EpochMetrics]) -> None:
    """metrics.jsonl holding these records, one line each (replacing what was there)."""
    storage.overwrite(url, b"".join(record.to_line() for record in records))


def epoch_numbers(run: RunDir) -> list[int]:
    """The epochs that have a folder under epochs/ (RunDir.epoch_dir's names), in order."""
    return sorted(int(name) for name in storage.listdir(run.epochs_dir) if name.isdigit() and len(name) == 6)


def epoch_folders(run: RunDir) -> dict[int, bool]:
    """The epoch folders under epochs/, each mapped to whether its ready.json is published."""
    return {epoch: storage.exists(run.ready(run.epoch_dir(epoch))) for epoch in epoch_numbers(run)}
