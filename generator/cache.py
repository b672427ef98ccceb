"""A cache of preprocessed datasets, keyed by the source fingerprint, shared across runs.

An entry is a folder `<dataset>-<fingerprint>-v<version>/` with three parts (names that are
unique per writer, written straight away) and `manifest.json`, published create-only
last. A reader trusts nothing but the manifest, and verifies each part's size and
checksum; two writers racing both succeed, the loser deletes its own parts.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from protocol import AlreadyPublished, InvalidInput, PartInfo, parts, storage
from protocol.errors import first_line
from protocol.messages import Message

from .preprocess import Dataset

log = logging.getLogger(__name__)

VERSION = 3  # bump when preprocessing changes what it produces (2: ties keep file order; 3: raw id maps)


@dataclass(frozen=True)
class CacheManifest(Message):
    source_name: ClassVar[str] = "cache manifest.json"
    dataset: str
    fingerprint: str
    num_users: int
    num_items: int
    num_ratings: int
    users_part: PartInfo  # columns train_count (int64), holdout, raw_id (int64)
    train_part: PartInfo  # column train_item
    items_part: PartInfo  # column raw_id (int64)
    version: int = VERSION


def entry_url(cache_dir: str, name: str, fingerprint: str) -> str:
    digest = fingerprint.split(":", 1)[-1][:32]
    return storage.join(cache_dir, f"{name}-{digest}-v{VERSION}")


def load(cache_dir: str, name: str, fingerprint: str) -> Dataset | None:
    """The cached dataset, or None when there is none (or it is unreadable: then rebuild)."""
    folder = entry_url(cache_dir, name, fingerprint)
    try:
        manifest = storage.read_message(storage.join(folder, "manifest.json"), CacheManifest)
        if manifest.fingerprint != fingerprint or manifest.dataset != name:
            raise InvalidInput(f"{folder}: manifest is for {manifest.dataset} {manifest.fingerprint}")
        users = parts.read(storage.join(folder, manifest.users_part.name), manifest.users_part)
        train = parts.read(storage.join(folder, manifest.train_part.name), manifest.train_part)
        items = parts.read(storage.join(folder, manifest.items_part.name), manifest.items_part)
    except FileNotFoundError:
        return None
    except (InvalidInput, OSError, KeyError) as error:
        log.warning("ignoring the cached copy in %s: %s", folder, first_line(error, limit=None))
        return None
    return Dataset(name=name, fingerprint=fingerprint, num_users=manifest.num_users,
                   num_items=manifest.num_items, num_ratings=manifest.num_ratings,
                   train_counts=np.array(users["train_count"]), train_items=np.array(train["train_item"]),
                   holdout=np.array(users["holdout"]), user_ids=np.array(users["raw_id"]),
                   item_ids=np.array(items["raw_id"]))


def store(cache_dir: str, dataset: Dataset) -> None:
    """Publishes a dataset to the cache; a failure only costs the next run a rebuild."""
    folder = entry_url(cache_dir, dataset.name, dataset.fingerprint)
    token = uuid.uuid4().hex[:12]
    try:
        users_part = parts.write(storage.join(folder, f"{token}-users"),
                                 {"train_count": dataset.train_counts.astype(np.int64), "holdout": dataset.holdout,
                                  "raw_id": dataset.raw_user_ids.astype(np.int64)})
        train_part = parts.write(storage.join(folder, f"{token}-train"), {"train_item": dataset.train_items})
        items_part = parts.write(storage.join(folder, f"{token}-items"),
                                 {"raw_id": dataset.raw_item_ids.astype(np.int64)})
        manifest = CacheManifest(dataset=dataset.name, fingerprint=dataset.fingerprint,
                                 num_users=dataset.num_users, num_items=dataset.num_items,
                                 num_ratings=dataset.num_ratings, users_part=users_part, train_part=train_part,
                                 items_part=items_part)
        storage.publish_once(storage.join(folder, "manifest.json"), manifest)
        log.info("cached the preprocessed %s in %s", dataset.name, folder)
    except AlreadyPublished:  # another writer was first: its copy is as good as ours
        for name in (f"{token}-users", f"{token}-train", f"{token}-items"):
            storage.delete(storage.join(folder, name))
    except OSError as error:
        log.warning("could not cache the preprocessed %s in %s: %s", dataset.name, folder, error)
