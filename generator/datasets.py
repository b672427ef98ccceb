"""From a command's dataset spec to a preprocessed Dataset, through the cache."""

from __future__ import annotations

import logging
import time

from protocol import DatasetSpec

from . import cache
from .preprocess import Dataset, split
from .ratings import Source, movielens_source
from .synthetic import RECIPES, synthetic_source

log = logging.getLogger(__name__)


def source_for(spec: DatasetSpec) -> Source:
    if spec.name in RECIPES:
        return synthetic_source(spec.name)
    return movielens_source(spec.name, spec.ratings)


def prepare(spec: DatasetSpec, cache_dir: str) -> Dataset:
    """The preprocessed dataset: from the cache when it holds this source, else built and cached."""
    started = time.monotonic()
    source = source_for(spec)
    dataset = cache.load(cache_dir, spec.name, source.fingerprint)
    if dataset is not None:
        log.info("reusing the preprocessed %s (%s) from the cache %s: skipped ingest and split",
                 spec.name, source.fingerprint[:23], cache.entry_url(cache_dir, spec.name, source.fingerprint))
        return dataset
    log.info("ingesting %s from %s", spec.name, spec.ratings or ("its recipe" if spec.name in RECIPES else "GroupLens"))
    raw = source.load()
    log.info("read %s ratings in %.1f s; splitting", f"{len(raw):,}", time.monotonic() - started)
    dataset = split(spec.name, raw)
    log.info("%s: %s users, %s items, %s training positives, one held out per user (%.1f s)", spec.name,
             f"{dataset.num_users:,}", f"{dataset.num_items:,}", f"{dataset.num_train:,}", time.monotonic() - started)
    cache.store(cache_dir, dataset)
    return dataset
