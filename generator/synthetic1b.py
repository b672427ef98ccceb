"""synthetic-20mx16x32: a stand-in for MovieLens 1B of the same shape, made per user range.

At scale 1: 2,197,225 users, 855,776 items and about 1.22 billion training positives (one
more item per user is held out), like ml-20mx16x32. The structure is synthetic-20m's
(generator.synthetic): users and items in latent clusters, a user's items drawn mostly from
their own cluster by power-law popularity, sometimes from all items.

Made for N generator pods: everything that sizes the set (each user's number of items, its
cluster) comes from one cheap stream over all users, so every pod knows every user's
positives (the index) at once; a user's items come from the stream of its block of
BLOCK_USERS users alone, so a pod makes only its own users, and the same user gets the same
items whichever range is asked for. `scale` shrinks users and items alike (tests, benches).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from protocol.parts import id_dtype

from .preprocess import MIN_RATINGS, Dataset, DatasetIndex
from .synthetic import Catalogue, Recipe, distinct

NAME = "synthetic-20mx16x32"
# ml-20mx16x32: 2,197,225 users, 855,776 items, 1,223,962,043 training positives (557 per user).
# A median of 294 extra items with this spread gives a mean of about 557.
FULL = Recipe(users=2_197_225, items=855_776, clusters=16, median_extra=294, spread=1.1, zipf=0.8,
              in_cluster=0.7, seed=1016)
BLOCK_USERS = 4096  # users drawn from one stream: enough to vectorize, few enough to stay in cache
ITEM_BITS = 20  # items < 2**20 up to scale 1.2, packed beside a user and a random key in a uint64
COUNTS, CATALOGUE, ITEMS = 0, 1, 2  # what a random stream is for: SeedSequence([seed, purpose, ...])


@dataclass(frozen=True)
class SyntheticExpanded:
    scale: float = 1.0

    @cached_property
    def recipe(self) -> Recipe:
        users, items = round(FULL.users * self.scale), round(FULL.items * self.scale)
        if users < 1 or not 2 * MIN_RATINGS <= items < 1 << ITEM_BITS:
            raise ValueError(f"scale {self.scale}: {users} users and {items} items")
        return Recipe(**{**FULL.__dict__, "users": users, "items": items})

    @cached_property
    def rated(self) -> np.ndarray:
        """Distinct items per user, the held-out one included (int64)."""
        r = self.recipe
        rng = _generator(r.seed, COUNTS)
        extra = np.exp(rng.normal(np.log(r.median_extra), r.spread, r.users))
        return MIN_RATINGS + np.minimum(extra, r.items // 4).astype(np.int64)

    @cached_property
    def user_cluster(self) -> np.ndarray:
        return _generator(self.recipe.seed, COUNTS, 1).integers(0, self.recipe.clusters, self.recipe.users)

    @cached_property
    def catalogue(self) -> Catalogue:
        return Catalogue(self.recipe, _generator(self.recipe.seed, CATALOGUE))

    def index(self) -> DatasetIndex:
        """Every user is a block of its own: a pod can make any range."""
        r = self.recipe
        return DatasetIndex(name=NAME, fingerprint=r.fingerprint, num_users=r.users, num_items=r.items,
                            num_ratings=int(self.rated.sum()), block_users=np.arange(r.users + 1),
                            block_train=self.rated - 1)

    def load_users(self, first: int, last: int) -> Dataset:
        """Users first..last-1: the blocks that hold them are made, then trimmed."""
        r = self.recipe
        if not 0 <= first < last <= r.users:
            raise ValueError(f"users {first}..{last - 1} of {r.users}")
        blocks = range(first // BLOCK_USERS, (last - 1) // BLOCK_USERS + 1)
        made = [self._block(b) for b in blocks]
        items = np.concatenate([m[0] for m in made])
        holdout = np.concatenate([m[1] for m in made])
        start = blocks[0] * BLOCK_USERS
        rated = self.rated[start:blocks[-1] * BLOCK_USERS + len(made[-1][1])]
        indptr = np.concatenate([[0], np.cumsum(rated - 1)])
        lo, hi = first - start, last - start
        return Dataset(name=NAME, fingerprint=r.fingerprint, num_users=last - first, num_items=r.items,
                       num_ratings=int(self.rated.sum()), train_counts=rated[lo:hi] - 1,
                       train_items=items[indptr[lo]:indptr[hi]].astype(id_dtype(r.items)),
                       holdout=holdout[lo:hi].astype(id_dtype(r.items)),
                       user_ids=np.arange(first, last, dtype=np.int64))

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(training items grouped by user, held-out item per user) of one block, uint32."""
        r = self.recipe
        first = block * BLOCK_USERS
        need = self.rated[first:first + BLOCK_USERS]
        rng = _generator(r.seed, ITEMS, block)
        local = np.repeat(np.arange(len(need), dtype=np.uint64), need + need // 4 + 8)  # repeats get dropped
        drawn = self.catalogue.draw(self.user_cluster[first + local.astype(np.int64)], rng).astype(np.uint64)
        pairs = distinct(np.sort(local << np.uint64(ITEM_BITS) | drawn))
        # Keep `need` of each user's distinct items, picked by a random key (sorted by user, then key).
        key = rng.integers(0, 1 << 20, len(pairs), dtype=np.uint64)
        mask = np.uint64((1 << ITEM_BITS) - 1)
        packed = np.sort((pairs >> np.uint64(ITEM_BITS)) << np.uint64(2 * ITEM_BITS) | key << np.uint64(ITEM_BITS)
                         | (pairs & mask))
        user = (packed >> np.uint64(2 * ITEM_BITS)).astype(np.int64)
        item = (packed & mask).astype(np.uint32)
        have = np.bincount(user, minlength=len(need))
        rank = np.arange(len(user)) - np.repeat(np.cumsum(have) - have, have)
        keep = rank < need[user]
        per_user = np.split(item[keep], np.cumsum(np.minimum(have, need))[:-1])
        for u in np.flatnonzero(have < need):  # rare: heavy users of small clusters
            per_user[u] = _top_up(per_user[u], need[u], r.items, rng)
        holdout = np.array([items[-1] for items in per_user], np.uint32)  # a random one: keys are random
        return np.concatenate([items[:-1] for items in per_user]), holdout


def _generator(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence(list(words))))


def _top_up(items: np.ndarray, need: int, num_items: int, rng: np.random.Generator) -> np.ndarray:
    """items plus random items not among them, need in all (the added ones go before the last,
    so the held-out item stays a drawn one)."""
    unrated = np.ones(num_items, bool)
    unrated[items] = False
    added = rng.choice(np.flatnonzero(unrated), need - len(items), replace=False).astype(np.uint32)
    return np.concatenate([items[:-1], added, items[-1:]])
