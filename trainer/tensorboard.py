"""Per-epoch scalars as a TensorBoard event file under <run>/tensorboard/.

    tensorboard --logdir gs://bucket/run/tensorboard

TensorFlow never opens gs:// itself (DESIGN.md), so the event file is built here, in
memory (TF's Event protos, framed as TFRecords: length, masked CRC32C of the length,
data, masked CRC32C of the data), and uploaded through protocol.storage by the trainer's
background writer.

One file, rewritten whole after every epoch from the run's history: it is tiny (about
150 bytes per epoch), it is a pure function of the history, so a restarted trainer rewrites
it to exactly the checkpoint's epochs (as it does metrics.jsonl) and never leaves a
duplicate step behind, and TensorBoard re-reads a file that grew. One new file per epoch
would instead leave the epochs a restart retrains in two files.
"""

from __future__ import annotations

import struct

import google_crc32c

from protocol import EpochMetrics, RunDir, storage

FOLDER = "tensorboard"
FILE = "events.out.tfevents.0000000000.ncf-trainer"  # TensorBoard reads files named events.out.tfevents.*

# tag -> EpochMetrics field
SCALARS = {"HR@10": "hr_at_10", "NDCG@10": "ndcg_at_10", "loss": "loss", "examples_per_s": "examples_per_s",
           "data_wait_s": "data_wait_s", "checkpoint_wait_s": "checkpoint_wait_s"}


def url(run: RunDir) -> str:
    return storage.join(run.url, FOLDER, FILE)


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


def event_file(history: list[EpochMetrics], started: float) -> bytes:
    """The event file of these epochs: a version event, then one event per epoch (step = epoch)."""
    from tensorflow.core.framework import summary_pb2
    from tensorflow.core.util import event_pb2

    out = [_record(event_pb2.Event(wall_time=started, file_version="brain.Event:2").SerializeToString())]
    for record in history:
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(getattr(record, name)))
                                             for tag, name in SCALARS.items()])
        out.append(_record(event_pb2.Event(wall_time=record.time, step=record.epoch, summary=summary)
                           .SerializeToString()))
    return b"".join(out)


def write(run: RunDir, history: list[EpochMetrics], started: float) -> None:
    storage.overwrite(url(run), event_file(history, started))
