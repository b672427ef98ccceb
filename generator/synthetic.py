"""Synthetic ratings from a fixed recipe: MovieLens-like shapes with a structure to learn.

Users and items belong to latent clusters. Each user rates mostly items of their own
cluster, picked by popularity (a power law), and sometimes any item by global popularity.
A model that learns the clusters ranks a user's held-out item far better than global
popularity does, which is what a baseline sees. Every user keeps at least 20 distinct
items and every item is rated at least once, so the preprocessed shape is exact
(synthetic-20m: 138,493 users and 26,744 items, like ml-20m).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from .preprocess import MIN_RATINGS
from .ratings import RawRatings, Source


@dataclass(frozen=True)
class Recipe:
    users: int
    items: int
    clusters: int
    median_extra: float  # median number of ratings a user has beyond MIN_RATINGS
    spread: float  # sigma of the log-normal number of extra ratings
    zipf: float  # item popularity ~ rank ** -zipf
    in_cluster: float  # share of a user's ratings drawn from their own cluster
    seed: int
    version: int = 1  # bump when the generation below changes: it keys the cache

    @property
    def fingerprint(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return "recipe:" + hashlib.sha256(text.encode()).hexdigest()


RECIPES = {
    "synthetic-small": Recipe(users=3000, items=1500, clusters=8, median_extra=15, spread=1.0,
                              zipf=0.8, in_cluster=0.8, seed=1),
    # ml-20m: 138,493 users, 26,744 items, 20.0M ratings (mean 144 per user, heavy tail).
    "synthetic-20m": Recipe(users=138_493, items=26_744, clusters=16, median_extra=95, spread=1.1,
                            zipf=0.8, in_cluster=0.7, seed=20),
}


def synthetic_source(name: str) -> Source:
    recipe = RECIPES[name]
    return Source(name, recipe.fingerprint, lambda: generate(recipe))


def generate(recipe: Recipe) -> RawRatings:
    rng = np.random.default_rng(recipe.seed)
    catalogue = Catalogue(recipe, rng)
    user_cluster = rng.integers(0, recipe.clusters, recipe.users)
    extra = np.exp(rng.normal(np.log(recipe.median_extra), recipe.spread, recipe.users))
    draws = MIN_RATINGS + np.minimum(extra, recipe.items // 4).astype(np.int64)
    user = np.repeat(np.arange(recipe.users), draws)
    pairs = distinct(np.sort(user * recipe.items + catalogue.draw(user_cluster[user], rng)))  # drops repeats
    user, item = np.divmod(pairs, recipe.items)
    user, item = _top_up(user, item, recipe, rng)
    user, item = _cover_every_item(user, item, recipe, rng)
    # Random timestamps: the held-out (latest) item is a random one of the user's items.
    timestamp = rng.integers(1_000_000_000, 1_400_000_000, len(user))
    return RawRatings(user + 1, item + 1, timestamp, recipe.fingerprint)


class Catalogue:
    """Samples items by popularity, either from one cluster or from all items.

    Sampling looks a uniform draw up in an inverse-CDF table (a quantized CDF): one
    gather per draw, several times faster than a binary search, and exact enough here.
    """

    TABLE = 1 << 16

    def __init__(self, recipe: Recipe, rng: np.random.Generator):
        self.recipe = recipe
        popularity = (1.0 + rng.permutation(recipe.items)) ** -recipe.zipf
        cluster = rng.integers(0, recipe.clusters, recipe.items)
        self.cluster_tables = np.stack([
            _inverse_cdf_table(np.flatnonzero(cluster == c), popularity, self.TABLE)
            for c in range(recipe.clusters)
        ])
        self.global_table = _inverse_cdf_table(np.arange(recipe.items), popularity, self.TABLE * 16)

    def draw(self, cluster: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u = rng.random(len(cluster))
        own = rng.random(len(cluster)) < self.recipe.in_cluster
        local = self.cluster_tables[cluster, (u * self.TABLE).astype(np.int64)]
        anywhere = self.global_table[(u * len(self.global_table)).astype(np.int64)]
        return np.where(own, local, anywhere)


def _inverse_cdf_table(items: np.ndarray, popularity: np.ndarray, size: int) -> np.ndarray:
    cdf = np.cumsum(popularity[items])
    picks = np.searchsorted(cdf / cdf[-1], (np.arange(size) + 0.5) / size, side="right")
    return items[np.minimum(picks, len(items) - 1)]


def distinct(sorted_values: np.ndarray) -> np.ndarray:
    # np.unique is very slow on large arrays in recent numpy; sort + mask is not.
    return sorted_values[np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])]


def _top_up(user: np.ndarray, item: np.ndarray, recipe: Recipe, rng: np.random.Generator):
    """Gives users left with fewer than MIN_RATINGS distinct items (after repeats were
    dropped) random items they have not rated yet. They are few, so a loop is fine."""
    have = np.bincount(user, minlength=recipe.users)
    starts = np.concatenate([[0], np.cumsum(have)])
    added_users, added_items = [], []
    for u in np.flatnonzero(have < MIN_RATINGS):
        rated = np.zeros(recipe.items, bool)
        rated[item[starts[u]:starts[u + 1]]] = True
        unrated = np.flatnonzero(~rated)
        added_items.append(rng.choice(unrated, MIN_RATINGS - have[u], replace=False))
        added_users.append(np.full(MIN_RATINGS - have[u], u))
    if not added_users:
        return user, item
    return np.concatenate([user, *added_users]), np.concatenate([item, *added_items])


def _cover_every_item(user: np.ndarray, item: np.ndarray, recipe: Recipe, rng: np.random.Generator):
    """Gives each never-rated item one rating by a random user (cannot duplicate a pair)."""
    unrated = np.flatnonzero(np.bincount(item, minlength=recipe.items) == 0)
    extra_users = rng.integers(0, recipe.users, len(unrated))
    return np.concatenate([user, extra_users]), np.concatenate([item, unrated])
