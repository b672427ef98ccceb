"""Ingest and preprocessing: file formats, wrong files, the split, synthetic sets, the cache,
and the checked download (with local files: there is no network here)."""

from __future__ import annotations

import hashlib
import logging
import zipfile

import numpy as np
import pytest

from generator import cache
from generator.datasets import prepare
from generator.preprocess import split
from generator.ratings import RawRatings, fetch_verified, movielens_source, parse
from generator.synthetic import RECIPES, generate
from protocol import DatasetSpec, InvalidInput, storage

ROWS = [(1, 10, 4.0, 1000), (1, 11, 3.5, 999), (2, 10, 5.0, 1200)]
FILES = {
    "ml-100k": b"".join(b"%d\t%d\t%d\t%d\n" % (u, i, r, t) for u, i, r, t in ROWS),
    "ml-1m": b"".join(b"%d::%d::%d::%d\n" % (u, i, r, t) for u, i, r, t in ROWS),
    "ml-20m": b"userId,movieId,rating,timestamp\n" + b"".join(b"%d,%d,%.1f,%d\n" % row for row in ROWS),
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_each_movielens_format_parses(name):
    user, item, timestamp = parse(name, FILES[name], "ratings")
    assert user.tolist() == [1, 1, 2] and item.tolist() == [10, 11, 10] and timestamp.tolist() == [1000, 999, 1200]


def test_ml100k_inter_file_with_header(ml100k):
    user, item, timestamp = parse("ml-100k", ml100k.read_bytes(), str(ml100k))
    assert len(user) == 100_000 and (user[0], item[0], timestamp[0]) == (196, 242, 881250949)


@pytest.mark.parametrize("name, data", [("ml-1m", FILES["ml-20m"]), ("ml-20m", FILES["ml-1m"]),
                                        ("ml-100k", FILES["ml-1m"])])
def test_a_file_of_another_dataset_is_named_and_explained(name, data):
    with pytest.raises(InvalidInput) as error:
        parse(name, data, "gs://b/ratings.x")
    message = str(error.value)
    assert message.startswith("gs://b/ratings.x: not a " + name) and "expected" in message
    assert "\n" not in message


def test_a_malformed_row_is_an_error_naming_the_file():
    data = FILES["ml-20m"] + b"3,12,oops\n"
    with pytest.raises(InvalidInput, match=r"^r.csv: malformed ml-20m ratings: .*row"):
        parse("ml-20m", data, "r.csv")
    with pytest.raises(InvalidInput, match="^r.dat: malformed ml-1m"):
        parse("ml-1m", FILES["ml-1m"] + b"4::x::1::5\n", "r.dat")


def test_ratings_are_read_from_the_run_storage(run_url, ml100k):
    url = storage.join(run_url, "raw", "ml-100k.inter")
    storage.write_bytes(url, ml100k.read_bytes())
    source = movielens_source("ml-100k", url)
    assert source.fingerprint == "sha256:" + hashlib.sha256(ml100k.read_bytes()).hexdigest()
    assert len(source.load()) == 100_000


def test_missing_ratings_file(run_url):
    missing = storage.join(run_url, "nothing-here.csv")
    with pytest.raises(InvalidInput, match="nothing-here.csv: ratings file not found"):
        movielens_source("ml-20m", missing)


def test_split_keeps_users_with_20_ratings_and_holds_out_the_latest():
    # User 5 rates items 200, 199, ..., 176 at times 0..24, but the last two share time 50:
    # they keep their order in the file, so 176 (the later row) is held out, not the larger id.
    # User 9 has 19 ratings: dropped, and with them the items only they rated (300+).
    user = np.array([5] * 25 + [9] * 19)
    item = np.concatenate([200 - np.arange(25), 300 + np.arange(19)])
    timestamp = np.concatenate([np.arange(25), np.arange(19)])
    timestamp[23:25] = 50
    dataset = split("ml-100k", RawRatings(user, item, timestamp, "sha256:x"))
    assert (dataset.num_users, dataset.num_items, dataset.num_train, dataset.num_ratings) == (1, 25, 24, 44)
    assert dataset.holdout.tolist() == [176 - 176]  # items re-indexed from 0 in id order
    assert dataset.train_items.tolist() == [200 - 176 - k for k in range(24)]


def test_synthetic_small_has_a_fixed_shape_and_is_deterministic():
    first, second = generate(RECIPES["synthetic-small"]), generate(RECIPES["synthetic-small"])
    assert np.array_equal(first.item, second.item) and np.array_equal(first.timestamp, second.timestamp)
    dataset = split("synthetic-small", first)
    assert (dataset.num_users, dataset.num_items) == (3000, 1500)
    assert 80_000 < dataset.num_ratings < 120_000


@pytest.mark.slow
def test_synthetic_20m_matches_ml20m_shape():
    dataset = split("synthetic-20m", generate(RECIPES["synthetic-20m"]))
    assert (dataset.num_users, dataset.num_items) == (138_493, 26_744)
    assert 19_500_000 < dataset.num_ratings < 20_500_000
    popularity = np.sort(np.bincount(dataset.train_items, minlength=dataset.num_items))[::-1]
    assert popularity[:267].sum() > 0.1 * dataset.num_train  # top 1% of items: 10x a uniform share
    assert popularity[-13_372:].sum() < 0.3 * dataset.num_train  # and a long tail


def test_a_second_preparation_reuses_the_cache(run_url, ml100k, caplog):
    cache_dir = storage.join(run_url, "cache")
    spec = DatasetSpec(name="ml-100k", ratings=str(ml100k))
    first = prepare(spec, cache_dir)
    with caplog.at_level(logging.INFO):
        second = prepare(spec, cache_dir)
    assert "reusing the preprocessed ml-100k" in caplog.text and "skipped ingest" in caplog.text
    for field in ("train_counts", "train_items", "holdout"):
        assert np.array_equal(getattr(first, field), getattr(second, field))
    for field in ("num_users", "num_items", "num_ratings"):
        assert getattr(first, field) == getattr(second, field)


def test_a_damaged_cache_entry_is_rebuilt(run_url, ml100k, caplog):
    cache_dir = storage.join(run_url, "cache")
    spec = DatasetSpec(name="ml-100k", ratings=str(ml100k))
    dataset = prepare(spec, cache_dir)
    folder = cache.entry_url(cache_dir, "ml-100k", dataset.fingerprint)
    train = next(name for name in storage.listdir(folder) if name.endswith("-train"))
    storage.write_bytes(storage.join(folder, train), b"garbage")
    assert cache.load(cache_dir, "ml-100k", dataset.fingerprint) is None
    assert "ignoring the cached copy" in caplog.text
    assert prepare(spec, cache_dir).num_train == dataset.num_train


def test_download_checks_the_pinned_digest(tmp_path):
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("ml-1m/ratings.dat", FILES["ml-1m"])
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert fetch_verified(archive.as_uri(), "sha256", digest) == archive.read_bytes()
    with pytest.raises(InvalidInput, match=r"ml-1m.zip: sha256 is [0-9a-f]{64}, expected the pinned 0{64}"):
        fetch_verified(archive.as_uri(), "sha256", "0" * 64)


def test_an_unreachable_download_fails_with_a_clear_message():
    with pytest.raises(OSError, match=r"could not download http://127.0.0.1:9/ml-20m.zip .*dataset.ratings"):
        fetch_verified("http://127.0.0.1:9/ml-20m.zip", "sha256", "0" * 64, timeout=5)
