"""The compiled loops under every epoch: the random stream, unbiased draws, uniform shuffles.

Each statistical check uses fixed seeds, so it gives the same answer on every run; its
bound is the chi-square quantile at p = 1e-6, which an unbiased kernel stays below by a
wide margin and an off-by-one in a draw or a placement exceeds by orders of magnitude.
"""

from __future__ import annotations

import itertools
import math
import shutil
from collections import Counter

import numpy as np
import pytest

from generator import kernels, sampling
from generator.preprocess import Dataset
from protocol import parts

# Chi-square quantiles at p = 1e-6, by degrees of freedom.
CHI2_1E6 = {2: 27.6, 5: 35.9, 23: 66.6, 39: 88.4}


def chi_square(counts: list[int]) -> float:
    expected = sum(counts) / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def test_the_stream_is_numpys_sfc64_seeded_the_same_way():
    seed = np.random.SeedSequence([7, 3, 1])
    states = kernels.streams(seed, 3)
    out = np.empty(1000, np.uint64)
    kernels.raw(states[0], out)
    assert np.array_equal(out, np.random.SFC64(seed).random_raw(1000))
    assert len({tuple(s) for s in states.tolist()}) == 3
    assert np.array_equal(kernels.streams(seed, 1)[0], kernels.streams(seed, 3)[0])


@pytest.mark.parametrize("n", [3, 4])
def test_shuffled_copy_makes_every_permutation_equally_likely(n):
    # n = 3: 2 draws per shuffle, both halves of one 64-bit output; n = 4: 3 draws, so
    # every other shuffle starts on a spare half.
    runs = 40_000 * math.factorial(n) // 6
    states = kernels.streams(np.random.SeedSequence(n), runs)
    values, out = np.arange(n, dtype=np.uint64), np.empty(n, np.uint64)
    seen = Counter()
    for state in states:
        kernels.shuffled_copy(state, values, out)
        seen[tuple(out.tolist())] += 1
    assert set(seen) == set(itertools.permutations(range(n)))
    assert chi_square(list(seen.values())) < CHI2_1E6[math.factorial(n) - 1]


def test_sample_shuffled_draws_unrated_negatives_uniformly():
    # Two users of a 10-item catalogue: user 0 rated 7 items (3 left to draw), user 1 rated 2.
    items = np.array([0, 1, 2, 3, 4, 5, 6, 8, 9], np.uint16)
    indptr = np.array([0, 7, 9])
    num_neg, runs = 4, 3000
    rated = kernels.item_bitmap(10)
    out = np.empty(9 * (1 + num_neg), np.uint64)
    negatives = {0: Counter(), 1: Counter()}
    for state in kernels.streams(np.random.SeedSequence(11), runs):
        kernels.sample_shuffled(indptr, items, 40, 10, num_neg, state, rated, out)
        user, item, label = (out >> 32).astype(int) - 40, (out & 0xFFFFFFFF) >> 1, out & 1
        assert Counter(zip(user[label == 1].tolist(), item[label == 1].tolist())) == Counter(
            {(0, i): 1 for i in range(7)} | {(1, 8): 1, (1, 9): 1})
        for u in (0, 1):
            negatives[u].update(item[(label == 0) & (user == u)].tolist())
    assert not rated.any()  # the scratch comes back clean
    assert set(negatives[0]) == {7, 8, 9} and sum(negatives[0].values()) == 7 * num_neg * runs
    assert set(negatives[1]) == set(range(8)) and sum(negatives[1].values()) == 2 * num_neg * runs
    assert chi_square(list(negatives[0].values())) < CHI2_1E6[2]


def test_an_epoch_puts_each_example_anywhere_with_equal_chance(tmp_path, monkeypatch):
    # 8 users with one positive each, 4 negatives: 40 examples in 4 chunks, 12 bins and
    # 4 parts, so every stage of the shuffle takes part. Over many epochs, where the
    # positive of user 0 and of user 7 (first and last chunk) land is uniform.
    monkeypatch.setattr(sampling, "CHUNK_POSITIVES", 2)
    monkeypatch.setattr(sampling, "BIN_EXAMPLES", 4)
    dataset = Dataset(name="synthetic-small", fingerprint="recipe:x", num_users=8, num_items=50,
                      num_ratings=16, train_counts=np.ones(8, np.int64),
                      train_items=np.arange(8, dtype=np.uint16), holdout=np.full(8, 20, np.uint16))
    epochs = 1200
    positions = {0: Counter(), 7: Counter()}
    folder = tmp_path / "epoch"
    with sampling.EpochWriter(dataset, seed=5, num_neg=4, workers=1, part_examples=10) as writer:
        assert (writer.layout.num_chunks, writer.layout.num_bins, writer.layout.num_parts) == (4, 12, 4)
        for epoch in range(epochs):
            listing = writer.write(epoch, str(folder))
            columns = [parts.read(str(folder / p.name), p) for p in listing]
            user, label = (np.concatenate([c[k] for c in columns]) for k in ("user", "label"))
            for u in positions:
                positions[u][int(np.flatnonzero((user == u) & (label == 1))[0])] += 1
            shutil.rmtree(folder)
    for u, seen in positions.items():
        assert len(seen) == 40, u
        assert chi_square([seen[p] for p in range(40)]) < CHI2_1E6[39], u
