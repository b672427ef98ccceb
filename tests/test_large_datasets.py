"""MovieLens 1B (ml-20mx16x32) read from shards in its published format, and its synthetic stand-in.

The real files cannot be downloaded here, so testkit.movielens1b writes small shards exactly as
MLPerf's expansion does, and the real reader runs on them (a local folder and gs://)."""

from __future__ import annotations

import numpy as np
import pytest

from generator.movielens1b import MovieLens1B
from generator.synthetic1b import FULL, SyntheticExpanded
from protocol import DatasetMeta, DatasetSpec, InvalidInput, MessageError, RunDir, storage
from testkit.builders import publish_command
from testkit.generator_support import last_line, make_command, read_columns, read_ready, run_generator
from testkit.movielens1b import save, write_shards
from trainer.serving import read_ids


@pytest.fixture(params=["local", "gcs"])
def shard_url(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "ml-20mx16x32")
    return request.getfixturevalue("gcs_bucket") + "/datasets/ml-20mx16x32"


def test_reader_compacts_users_and_keeps_every_row(shard_url):
    written = write_shards(shard_url, shards=3)
    dataset = MovieLens1B(shard_url).load_users(0, len(written.raw_users))
    # Dense users in shard order; the holes at each block's end are gone; raw ids kept for serving.
    np.testing.assert_array_equal(dataset.user_ids, written.raw_users)
    assert dataset.num_users < written.raw_users.max() + 1
    rows = np.concatenate(written.train)
    np.testing.assert_array_equal(np.repeat(dataset.user_ids, dataset.train_counts), rows[:, 0])
    np.testing.assert_array_equal(dataset.train_items, rows[:, 1])
    np.testing.assert_array_equal(dataset.holdout, np.concatenate(written.test)[:, 1])
    assert dataset.num_items == rows[:, 1].max() + 1  # as MLPerf counts them: 0 is an item


def test_index_and_ranges_match_the_whole_set(tmp_path):
    write_shards(str(tmp_path), shards=4)
    source = MovieLens1B(str(tmp_path))
    index, whole = source.index(), source.load_users(0, source.index().num_users)
    assert (index.num_users, index.num_items, index.num_train) == (whole.num_users, whole.num_items, whole.num_train)
    np.testing.assert_array_equal(np.diff(index.block_users), [len(s.raw_users) for s in source.shards])
    for first, last in [(0, 1), (3, index.block_users[2] + 5), (index.block_users[1], index.block_users[3])]:
        part, expected = source.load_users(first, last), whole.users(first, last)
        for field in ("train_counts", "train_items", "holdout", "user_ids"):
            np.testing.assert_array_equal(getattr(part, field), getattr(expected, field), err_msg=field)


def test_a_range_reads_only_the_shards_that_hold_it(tmp_path):
    write_shards(str(tmp_path), shards=3)
    source = MovieLens1B(str(tmp_path))
    bounds = source.index().block_users
    storage.delete(str(tmp_path / "trainx16x32_2.npz"))
    assert source.load_users(0, bounds[2]).num_users == bounds[2]
    with pytest.raises(InvalidInput, match="trainx16x32_2.npz: shard not found"):
        source.load_users(bounds[2] - 1, bounds[2] + 1)


def test_the_tarball_folder_may_be_named_by_its_parent(tmp_path):
    written = write_shards(str(tmp_path / "ml-20mx16x32"), shards=2)
    assert MovieLens1B(str(tmp_path)).index().num_users == len(written.raw_users)


def test_a_full_set_with_other_counts_is_refused(tmp_path):
    write_shards(str(tmp_path), shards=16, block=4, num_items=60)
    with pytest.raises(InvalidInput, match=r"not GroupLens' ml-20mx16x32: train interactions [\d,]+ "
                                           r"\(published: 1,223,962,043\), users [\d,]+ \(published: 2,197,225\)"):
        MovieLens1B(str(tmp_path)).index()


@pytest.mark.parametrize("damage, message", [
    (lambda folder: storage.delete(f"{folder}/testx16x32_1.npz"), "expected ml-20mx16x32's shards"),
    (lambda folder: save(f"{folder}/trainx16x32_0.npz", np.zeros((5, 3), np.int64)),
     r"trainx16x32_0.npz: arr_0 is int64 \(5, 3\); expected int64 \(n, 2\)"),
    (lambda folder: storage.write_bytes(f"{folder}/trainx16x32_1.npz", b"user,item\n1,2\n"), "not an .npz"),
    (lambda folder: save(f"{folder}/testx16x32_0.npz", np.array([[3, 1], [2, 5]])), "increasing user order"),
])
def test_damaged_shards_are_named(tmp_path, damage, message):
    write_shards(str(tmp_path), shards=2)
    damage(str(tmp_path))
    with pytest.raises(InvalidInput, match=message):
        source = MovieLens1B(str(tmp_path))
        source.load_users(0, source.index().num_users)


def test_train_rows_of_users_the_test_shard_lacks_are_refused(tmp_path):
    written = write_shards(str(tmp_path), shards=1)
    save(str(tmp_path / "testx16x32_0.npz"), written.test[0][1:])
    source = MovieLens1B(str(tmp_path))
    with pytest.raises(InvalidInput, match="does not list"):
        source.load_users(0, source.index().num_users)


def test_synthetic_ranges_are_cuts_of_the_whole_set():
    source = SyntheticExpanded(0.002)
    index = source.index()
    whole = source.load_users(0, index.num_users)
    assert whole.num_train == index.num_train and index.num_users == round(FULL.users * 0.002)
    for first, last in [(0, 7), (4000, 4200), (100, index.num_users)]:
        part, expected = source.load_users(first, last), whole.users(first, last)
        for field in ("train_counts", "train_items", "holdout", "user_ids"):
            np.testing.assert_array_equal(getattr(part, field), getattr(expected, field), err_msg=field)


def test_synthetic_users_have_distinct_items_a_power_law_and_clusters():
    source = SyntheticExpanded(0.002)
    data = source.load_users(0, source.index().num_users)
    user = np.repeat(np.arange(data.num_users), data.train_counts)
    rated = np.concatenate([user, np.arange(data.num_users)]) * data.num_items + \
        np.concatenate([data.train_items, data.holdout]).astype(np.int64)
    assert len(np.unique(rated)) == len(rated)  # no item twice for a user, the held-out one included
    popularity = np.sort(np.bincount(data.train_items, minlength=data.num_items))[::-1]
    # Power law: the top 1% of items get over 3x their uniform share (at this scale most users rate
    # a quarter of all items, which flattens it; 4% here).
    assert popularity[: data.num_items // 100].sum() > 0.03 * popularity.sum()
    # Planted structure: users of one cluster share items far more than users of two clusters do.
    clusters = source.user_cluster
    same, other = [np.flatnonzero(clusters == c)[:50] for c in (0, 1)]
    assert _overlap(data, same[:25], same[25:]) > 1.5 * _overlap(data, same[:25], other[:25])


def _overlap(data, users_a, users_b) -> float:
    """Mean Jaccard similarity of the item sets of users_a[i] and users_b[j]."""
    indptr = data.indptr
    sets = {u: set(data.train_items[indptr[u]:indptr[u + 1]].tolist()) for u in [*users_a, *users_b]}
    return float(np.mean([len(sets[a] & sets[b]) / len(sets[a] | sets[b]) for a in users_a for b in users_b]))


def test_synthetic_at_full_scale_has_ml_20mx16x32s_shape():
    index = SyntheticExpanded().index()  # no item is made: the index alone
    assert (index.num_users, index.num_items) == (2_197_225, 855_776)
    assert abs(index.num_train / 1_223_962_043 - 1) < 0.01


def test_the_generator_makes_a_run_from_the_shards(run_url, cli_env):
    shards = storage.join(storage.parent(run_url), "ml-20mx16x32")
    written = write_shards(shards, shards=3)
    publish_command(run_url, make_command("ml-20mx16x32", shards, epochs=1, eval_negatives=20))
    result = run_generator(run_url, cli_env)
    assert result.returncode == 0, result.stderr
    run = RunDir(run_url)
    meta = storage.read_message(run.meta, DatasetMeta)
    train_rows = sum(len(t) for t in written.train)
    assert (meta.num_users, meta.num_train) == (len(written.raw_users), train_rows)
    assert read_ready(run_url, 0).num_examples == train_rows * 5
    eval_users = read_columns(run_url, None)["user"]
    np.testing.assert_array_equal(eval_users, np.arange(len(written.raw_users)))
    # Served on raw user ids; items are MLPerf's own (dense); no training items are published.
    assert sorted(storage.listdir(run.ids_dir)) == ["ids.json", "users"]
    ids = read_ids(run, meta.run_id, meta)
    np.testing.assert_array_equal(ids.user_raw, written.raw_users)
    np.testing.assert_array_equal(ids.item_raw, np.arange(meta.num_items))
    assert len(ids.rated) == 0 and not ids.indptr.any()


def test_the_generator_refuses_a_full_set_with_other_counts_with_exit_2(tmp_path, cli_env):
    write_shards(str(tmp_path / "ml-20mx16x32"), shards=16, block=4, num_items=60)
    run_url = str(tmp_path / "run")
    publish_command(run_url, make_command("ml-20mx16x32", str(tmp_path / "ml-20mx16x32"), epochs=1))
    result = run_generator(run_url, cli_env)
    assert result.returncode == 2
    assert "not GroupLens' ml-20mx16x32: train interactions" in last_line(result.stderr)


def test_ml_20mx16x32_needs_its_shards_named():
    with pytest.raises(MessageError, match="dataset.ratings.*the folder of ml-20mx16x32's shards"):
        DatasetSpec(name="ml-20mx16x32")
