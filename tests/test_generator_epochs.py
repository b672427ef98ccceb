"""What the generator writes: the split, every epoch's examples, the eval data, determinism.

The generator runs in this process (generator.job.generate) against a local folder and the
real fake-gcs-server; everything is read back through ready.json with checksums.
"""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
from testkit.builders import publish_command
from testkit.emulator import new_run_url
from testkit.generator_support import make_command, part_bytes, read_columns, read_ready, read_status

from generator import sampling
from generator import job
from generator.job import Options
from generator.preprocess import Dataset
from protocol import DatasetMeta, RunDir, parts, storage

ML100K = dict(users=943, items=1682, ratings=100_000, train=99_057)


def generate(run_url: str, command, workers: int = 1, part_examples: int = 100_000, upload_concurrency: int = 16) -> None:
    publish_command(run_url, command)
    job.generate(Options(data_dir=run_url, workers=workers, heartbeat_interval=0.2, part_examples=part_examples,
                upload_concurrency=upload_concurrency))


@pytest.fixture(scope="module", params=["local", "gcs"])
def ml100k_run(request, tmp_path_factory, ml100k) -> str:
    """One finished ml-100k run per backend for the module: the tests only read it."""
    run_url = new_run_url(request, tmp_path_factory.mktemp("ml100k"))
    generate(run_url, make_command("ml-100k", str(ml100k), epochs=2, eval_mode="mlperf", eval_negatives=999))
    return run_url


def reference_split(path) -> tuple[dict[int, int], set[tuple[int, int]]]:
    """Held-out item per user and the training pairs, computed plainly from the .inter file."""
    with open(path) as f:
        rows = [(int(r[0]), int(r[1]), int(float(r[3]))) for r in csv.reader(f, delimiter="\t") if r[0].isdigit()]
    per_user: dict[int, list[tuple[int, int]]] = {}
    for user, item, timestamp in rows:
        per_user.setdefault(user, []).append((timestamp, item))
    # Python's sort is stable: same-timestamp ratings keep their order in the file.
    kept = {u: sorted(v, key=lambda rating: rating[0]) for u, v in per_user.items() if len(v) >= 20}
    user_id = {u: i for i, u in enumerate(sorted(kept))}
    item_id = {it: i for i, it in enumerate(sorted({it for v in kept.values() for _, it in v}))}
    holdout = {user_id[u]: item_id[v[-1][1]] for u, v in kept.items()}
    train = [(user_id[u], item_id[it]) for u, v in kept.items() for _, it in v[:-1]]
    return holdout, train


def training_pairs(columns) -> Counter:
    positive = columns["label"] == 1
    return Counter(zip(columns["user"][positive].tolist(), columns["item"][positive].tolist()))


def test_split_matches_the_reference(ml100k_run, ml100k):
    meta = storage.read_message(RunDir(ml100k_run).meta, DatasetMeta)
    assert (meta.num_users, meta.num_items, meta.num_ratings, meta.num_train) == tuple(ML100K.values())
    assert meta.fingerprint.startswith("sha256:") and meta.run_id == "test-run"
    holdout, train = reference_split(ml100k)
    evaluation = read_columns(ml100k_run, None)
    assert evaluation["user"].tolist() == list(range(ML100K["users"]))
    assert evaluation["items"][:, 0].tolist() == [holdout[u] for u in range(ML100K["users"])]
    for epoch in (0, 1):
        # Every training positive exactly once, and nothing else labelled 1.
        assert training_pairs(read_columns(ml100k_run, epoch)) == Counter(train)


def test_epochs_hold_num_neg_unrated_negatives_per_positive(ml100k_run, ml100k):
    _, train = reference_split(ml100k)
    rated = set(train)
    train_count = np.bincount([u for u, _ in train], minlength=ML100K["users"])
    for epoch in (0, 1):
        ready = read_ready(ml100k_run, epoch)
        assert ready.kind == "train" and ready.epoch == epoch and ready.run_id == "test-run"
        assert ready.num_examples == ML100K["train"] * 5 and len(ready.parts) == 5
        columns = read_columns(ml100k_run, epoch)
        assert {k: v.dtype for k, v in columns.items()} == {"user": np.uint16, "item": np.uint16, "label": np.uint8}
        negative = columns["label"] == 0
        users, items = columns["user"][negative], columns["item"][negative]
        assert np.array_equal(np.bincount(users, minlength=ML100K["users"]), 4 * train_count)
        assert not any((u, i) in rated for u, i in zip(users.tolist(), items.tolist()))
        assert items.max() < ML100K["items"]
        # Globally shuffled: neither users nor labels come in runs.
        assert np.mean(columns["user"][1:] == columns["user"][:-1]) < 0.01
        assert 0.15 < np.mean(columns["label"][: len(columns["label"]) // 10]) < 0.25
    assert part_bytes(ml100k_run, 0) != part_bytes(ml100k_run, 1)
    status = read_status(ml100k_run)
    assert (status.state, status.epochs_done, status.run_id) == ("done", 2, "test-run")


def test_mlperf_eval_negatives_are_unrated_and_repeats_masked(ml100k_run, ml100k):
    holdout, train = reference_split(ml100k)
    rated = set(train) | set(holdout.items())
    evaluation = read_columns(ml100k_run, None)
    items, mask = evaluation["items"], evaluation["mask"]
    assert items.shape == mask.shape == (ML100K["users"], 1000)
    assert items.dtype == np.uint16 and mask.dtype == np.uint8
    repeats = 0
    for user in range(ML100K["users"]):
        seen = set()
        for j in range(1, 1000):
            item = int(items[user, j])
            assert (user, item) not in rated
            assert mask[user, j] == (item not in seen)
            repeats += item in seen
            seen.add(item)
    assert repeats > 0 and (mask[:, 0] == 1).all()  # with replacement: 999 of ~1500 items repeat


def test_paper_mode_workers_and_uploads_do_not_change_a_byte(run_url, monkeypatch):
    # Small chunks and bins: many of each, so the two stages of the shuffle really mix.
    monkeypatch.setattr(sampling, "CHUNK_POSITIVES", 5000)
    monkeypatch.setattr(sampling, "BIN_EXAMPLES", 4096)
    command = make_command("synthetic-small", epochs=2, eval_mode="paper", eval_negatives=999)
    one, two = run_url, run_url + "-workers"
    generate(one, command, workers=1, part_examples=50_000, upload_concurrency=1)
    generate(two, command, workers=2, part_examples=50_000, upload_concurrency=5)
    for epoch in (0, 1):
        assert part_bytes(one, epoch) == part_bytes(two, epoch)
        assert read_ready(one, epoch) == read_ready(two, epoch)
    assert read_ready(one, None) == read_ready(two, None)
    assert part_bytes(one, 0) != part_bytes(one, 1)

    meta = storage.read_message(RunDir(one).meta, DatasetMeta)
    evaluation = read_columns(one, None)
    training = read_columns(one, 0)
    pairs = training_pairs(training)
    rated = set(pairs)
    assert (evaluation["mask"] == 1).all()
    for user in range(0, meta.num_users, 7):
        negatives = evaluation["items"][user, 1:].tolist()
        assert len(set(negatives)) == 999  # without replacement
        assert evaluation["items"][user, 0] not in negatives
        assert not any((user, item) in rated for item in negatives)
    assert sum(pairs.values()) == meta.num_train == len(pairs)


def test_large_user_and_item_ids_survive_packing(run_url):
    # 70,000 users (uint32 ids) and 60,000 items (uint16 ids above 2**15).
    users, items = 70_000, 60_000
    counts = np.full(users, 2)
    train_items = np.tile(np.array([59_999, 40_000], np.uint16), users)
    dataset = Dataset(name="synthetic-small", fingerprint="recipe:x", num_users=users, num_items=items,
                      num_ratings=3 * users, train_counts=counts, train_items=train_items,
                      holdout=np.full(users, 1, np.uint16))
    folder = storage.join(run_url, "epoch")
    with sampling.EpochWriter(dataset, seed=1, num_neg=1, workers=1) as writer:
        listing = writer.write(0, folder)
    columns = [parts.read(storage.join(folder, p.name), p) for p in listing]
    user, item, label = (np.concatenate([c[k] for c in columns]) for k in ("user", "item", "label"))
    assert user.dtype == np.uint32 and item.dtype == np.uint16
    assert Counter(zip(user[label == 1].tolist(), item[label == 1].tolist())) == Counter(
        {(u, i): 1 for u in range(users) for i in (59_999, 40_000)})
    assert np.array_equal(np.bincount(user[label == 0]), counts)
    assert not np.isin(item[label == 0], [59_999, 40_000]).any() and item.max() < items


def test_paper_mode_gives_heavy_raters_every_unrated_item_and_masks_the_rest(tmp_path, ml100k):
    # ml-100k users who rated over 683 of 1,682 items have fewer than 999 unrated ones.
    run_url = str(tmp_path / "run")
    generate(run_url, make_command("ml-100k", str(ml100k), epochs=1, eval_mode="paper", eval_negatives=999))
    evaluation = read_columns(run_url, None)
    holdout, train = reference_split(ml100k)
    rated: dict[int, set[int]] = {}
    for user, item in train:
        rated.setdefault(user, set()).add(item)
    padded_users = 0
    for user in range(ML100K["users"]):
        valid = evaluation["items"][user, 1:][evaluation["mask"][user, 1:] == 1].tolist()
        unrated = ML100K["items"] - len(rated[user]) - 1
        assert len(valid) == min(999, unrated) == len(set(valid))
        assert not set(valid) & (rated[user] | {holdout[user]})
        padded_users += unrated < 999
    assert padded_users > 0, "ml-100k has heavy raters; the test must cover them"


def test_a_slice_has_the_same_bytes_whatever_was_made_before_it(tmp_path, monkeypatch):
    # Each split is drawn ahead for what the writer guesses comes next; a pod that resumes, or
    # makes only some slices, makes them in another order: its guesses miss, its bytes may not change.
    monkeypatch.setattr(sampling, "CHUNK_POSITIVES", 50)
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 6, 300)
    dataset = Dataset(name="synthetic-small", fingerprint="recipe:x", num_users=300, num_items=40,
                      num_ratings=int(counts.sum()) + 300, train_counts=counts,
                      train_items=np.concatenate([rng.choice(40, c, replace=False) for c in counts]).astype(np.uint16),
                      holdout=np.full(300, 39, np.uint16))
    pieces = [sampling.EpochSlice(index=s, dataset=dataset.users(first, last), first_user=first, first_part=3 * s,
                                  all_users=300) for s, (first, last) in enumerate([(0, 120), (120, 300)])]

    def made(order: list[tuple[int, int]], slices: list[sampling.EpochSlice]) -> dict[tuple[int, int], list[bytes]]:
        with sampling.EpochWriter(slices, seed=2, num_neg=3, workers=2, part_examples=400) as writer:
            written = {}
            for epoch, s in order:
                folder = tmp_path / f"{len(order)}-{len(slices)}-{epoch}-{s}"
                written[epoch, s] = [(folder / p.name).read_bytes() for p in writer.write(epoch, str(folder), s)]
            return written

    in_order = made([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)], pieces)
    assert made([(2, 1), (0, 0), (1, 1), (1, 0), (2, 0), (0, 1)], pieces) == in_order
    assert made([(1, 1), (2, 1), (0, 1)], pieces[1:]) == {k: v for k, v in in_order.items() if k[1] == 1}
    assert in_order[0, 0] != in_order[1, 0]
