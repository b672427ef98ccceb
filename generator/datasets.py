"""From a command's dataset spec to a preprocessed Dataset, through the cache."""

from __future__ import annotations

import logging
import time

from protocol import DatasetSpec, InvalidInput

from . import cache, movielens1b, synthetic1b
from .movielens1b import MovieLens1B
from .preprocess import Dataset, DatasetIndex, split
from .ratings import Source, movielens_source
from .synthetic import RECIPES, synthetic_source
from .synthetic1b import SyntheticExpanded

log = logging.getLogger(__name__)


def source_for(spec: DatasetSpec) -> Source:
    if spec.name in RECIPES:
        return synthetic_source(spec.name)
    return movielens_source(spec.name, spec.ratings)


def user_range_source(spec: DatasetSpec) -> MovieLens1B | SyntheticExpanded | None:
    """The loader of a dataset too large for one pod, which loads users by range; None for the others."""
    if spec.name == movielens1b.NAME:
        if spec.ratings is None:
            raise InvalidInput(f"{spec.name} cannot be downloaded here: dataset.ratings must name the folder of "
                               f"its shards (GroupLens' ml-20mx16x32.tar, unpacked)")
        return MovieLens1B(spec.ratings)
    if spec.name == synthetic1b.NAME:
        return SyntheticExpanded(1.0 if spec.scale is None else spec.scale)
    return None


def index(spec: DatasetSpec, cache_dir: str) -> DatasetIndex:
    """What every generator pod knows up front: sizes and loadable blocks of users (DatasetIndex)."""
    source = user_range_source(spec)
    return source.index() if source is not None else prepare(spec, cache_dir).index()


def load_users(spec: DatasetSpec, cache_dir: str, first: int, last: int) -> Dataset:
    """Dense users first..last-1 only (user u of the result is user first + u): a generator pod's share.
    MovieLens 1B reads only the shards that hold them; synthetic-20mx16x32 makes only them; the
    smaller sets are prepared whole (they fit) and cut."""
    source = user_range_source(spec)
    if source is not None:
        return source.load_users(first, last)
    return prepare(spec, cache_dir).users(first, last)


def prepare(spec: DatasetSpec, cache_dir: str) -> Dataset:
    """The preprocessed dataset: from the cache when it holds this source, else built and cached.
    The sets that load by user range are already split: read or made whole, not cached."""
    started = time.monotonic()
    large = user_range_source(spec)
    if large is not None:
        dataset = large.load_users(0, large.index().num_users)
        log.info("%s: %s users, %s items, %s training positives (%.1f s)", spec.name, f"{dataset.num_users:,}",
                 f"{dataset.num_items:,}", f"{dataset.num_train:,}", time.monotonic() - started)
        return dataset
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
