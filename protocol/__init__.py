"""The contract between the generator and the trainer: messages, bucket I/O, part format.

Both Jobs import this package and nothing of each other's.
"""

from .errors import (
    EXIT_INVALID, EXIT_OK, EXIT_OTHER, EXIT_PEER, AlreadyPublished, BucketUnavailable, CorruptData,
    ForeignRun, InvalidInput, MessageError, PeerError, WaitTimeout,
)
from .layout import RunDir
from .messages import PROTOCOL_VERSION, Command, DatasetMeta, DatasetSpec, EpochMetrics, PartInfo, Ready, Result, Status

__all__ = [
    "EXIT_INVALID", "EXIT_OK", "EXIT_OTHER", "EXIT_PEER", "AlreadyPublished", "BucketUnavailable", "CorruptData", "ForeignRun",
    "InvalidInput", "MessageError", "PeerError", "WaitTimeout", "RunDir", "PROTOCOL_VERSION",
    "Command", "DatasetMeta", "DatasetSpec", "EpochMetrics", "PartInfo", "Ready", "Result", "Status",
]
