"""Slices of an epoch and the pods that make them (DESIGN.md "Past one pod").

An epoch is cut into `slices` S (command.json): contiguous ranges of dense user ids,
balanced by training positives. Slice s of epoch k depends only on (seed, k, s): its
users' negatives, shuffled within the slice (generator.sampling), as its own parts.
Parts are numbered through the epoch, slice after slice, and every pod can number them
from the positives per slice alone; so an epoch folder and its ready.json are the same
bytes whichever pods made which slices. The eval data is cut the same way.

Of N generator pods, pod i makes the slices s with s mod N = i.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol import MessageError, Ready, RunDir, storage

from .sampling import parts_for


@dataclass(frozen=True)
class Slicing:
    """Where an epoch's slices begin and end."""

    users: np.ndarray  # int64 [S + 1]: slice s holds the users users[s]:users[s + 1]
    positives: np.ndarray  # int64 [S]: training positives per slice

    @property
    def count(self) -> int:
        return len(self.positives)

    @staticmethod
    def cut(block_users: np.ndarray, block_positives: np.ndarray, slices: int, source: str) -> Slicing:
        """S slices of blocks of users (block b: users block_users[b]:block_users[b + 1], with
        block_positives[b] positives; a dataset in memory has one block per user): each cut
        at the block bound nearest to s/S of the positives. source names command.json in errors."""
        cumulative = np.concatenate([[0], np.cumsum(block_positives, dtype=np.int64)])
        targets = cumulative[-1] * np.arange(1, slices) / slices
        after = np.searchsorted(cumulative, targets)  # the first bound at or past each target
        nearer_before = targets - cumulative[after - 1] < cumulative[after] - targets
        bounds = np.concatenate([[0], np.where(nearer_before, after - 1, after), [len(block_positives)]])
        if np.any(np.diff(bounds) <= 0):
            raise MessageError(source, "slices", f"few enough slices that each gets users (this dataset's "
                               f"{len(block_positives)} blocks of users give at most about "
                               f"{_most_slices(cumulative)})", slices)
        return Slicing(users=np.asarray(block_users)[bounds].astype(np.int64), positives=np.diff(cumulative[bounds]))

    def first_parts(self, examples_per_positive: int, part_examples: int) -> np.ndarray:
        """int64 [S + 1]: slice s's parts are numbered first_parts[s]:first_parts[s + 1]."""
        counts = [parts_for(int(p) * examples_per_positive, part_examples) for p in self.positives]
        return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


def owned(slices: int, shard: int, shards: int) -> list[int]:
    """The slices pod `shard` of `shards` makes."""
    return list(range(shard, slices, shards))


def _most_slices(cumulative: np.ndarray) -> int:
    """Slices such that none is empty, for the largest block: total // largest block."""
    return max(1, int(cumulative[-1] // max(1, np.diff(cumulative).max())))


def made(folder: str, slices: list[int]) -> bool:
    """Whether the manifest of every one of these slices is published in folder (an epoch's or
    the eval data's). One listing: pods ask this while they wait for a free buffer slot."""
    present = set(storage.listdir(RunDir.slices_dir(folder)))
    return all(RunDir.slice_ready_name(s) in present for s in slices)


def publish(folder: str, manifest: Ready, slices: int) -> bool:
    """Publishes one slice's manifest (create-only; an earlier attempt's identical bytes are
    success), then the folder's ready.json if every slice is made (complete). True if it is."""
    storage.publish_once(RunDir.slice_ready(folder, manifest.slice), manifest)
    return complete(folder, manifest.run_id, manifest.kind, manifest.epoch, slices, known=manifest)


def complete(folder: str, run_id: str, kind: str, epoch: int | None, slices: int, known: Ready | None = None) -> bool:
    """If every slice's manifest is in folder: publishes ready.json, listing their parts in slice
    order, and returns True. Pods racing here publish the same bytes: success for each. `known`:
    a manifest just published (its bytes are those in folder), not read back: reading a manifest
    of a hundred parts costs 20-40 ms of a core, holding the GIL, every epoch."""
    if not made(folder, list(range(slices))):
        return False
    try:
        manifests = [known if known is not None and known.slice == s else
                     storage.read_message(RunDir.slice_ready(folder, s), Ready, run_id) for s in range(slices)]
    except FileNotFoundError:  # another pod completed it and the trainer has consumed and deleted it since
        return False
    storage.publish_once(RunDir.ready(folder), Ready(
        run_id=run_id, kind=kind, epoch=epoch, num_examples=sum(m.num_examples for m in manifests),
        parts=[part for m in manifests for part in m.parts], slices=[m.num_examples for m in manifests]))
    return True
