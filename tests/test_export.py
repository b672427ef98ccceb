"""The served model (GitHub issue 14): raw ids at the edges, the recommend signature against
brute force, out-of-vocabulary answers, best-vs-last export (also after a restart),
ncf-recommend, the id maps the generator publishes and caches, and the generator's own
last words in the trainer's error. Real TensorFlow on CPU, small data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from testkit.builders import metrics
from generator.job import publish_ids
from generator.preprocess import Dataset
from protocol import DatasetSpec, ForeignRun, InvalidInput, PeerError, Result, RunDir, Status, storage
from protocol.cli import run as run_console
from testkit.trainer_support import command, publish_epoch, run_cli, trainer_args, write_run

NUM_USERS, NUM_ITEMS = 30, 50
FAST = ["--steps-per-execution", "4", "--learning-rate", "0.02"]  # learns (and unlearns) within an epoch or two


def load(path: str):
    import tensorflow as tf

    return tf.saved_model.load(path)


def brute_force(model, ids, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k raw items and scores per dense user: every item scored by the Keras model, rated ones excluded."""
    num_items = len(ids.item_raw)
    u = np.repeat(users, num_items).astype(np.int32)
    i = np.tile(np.arange(num_items), len(users)).astype(np.int32)
    logits = np.asarray(model((u, i), training=False)).reshape(len(users), num_items)
    scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
    for row, user in enumerate(users):
        scores[row, ids.rated[ids.indptr[user]:ids.indptr[user + 1]]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    return np.where(np.isfinite(top), ids.item_raw[order], -1), np.where(np.isfinite(top), top, np.nan)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A NeuMF with random weights, raw ids far from the dense ones, random rated items per
    user (some users rate nearly everything), saved as the trainer exports it."""
    from trainer.serving import ServingIds, save_serving
    from trainer.model import build_neumf

    rng = np.random.default_rng(7)
    model = build_neumf(NUM_USERS, NUM_ITEMS, 4, [8, 4])
    for weight in model.weights:
        weight.assign(rng.normal(0, 1, weight.shape).astype("float32"))
    counts = rng.integers(0, 12, NUM_USERS)
    counts[3] = NUM_ITEMS - 2  # two unrated items left: recommend pads with -1
    rated = np.concatenate([rng.choice(NUM_ITEMS, c, replace=False) for c in counts]).astype(np.int32)
    ids = ServingIds(user_raw=rng.choice(10**9, NUM_USERS, replace=False).astype(np.int64),
                     item_raw=rng.choice(10**6, NUM_ITEMS, replace=False).astype(np.int64),
                     indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), rated=rated)
    path = str(tmp_path_factory.mktemp("served") / "model" / "saved_model")
    save_serving(model, ids, path)
    return model, ids, path


@pytest.mark.parametrize("k", [1, 10, NUM_ITEMS + 5])
def test_recommend_matches_brute_force(served, k):
    import tensorflow as tf

    model, ids, path = served
    out = load(path).signatures["recommend"](user=tf.constant(ids.user_raw), k=tf.constant(k, tf.int32))
    items, scores = brute_force(model, ids, np.arange(NUM_USERS), min(k, NUM_ITEMS))
    assert out["known"].numpy().all()
    np.testing.assert_array_equal(out["items"].numpy(), items)
    np.testing.assert_allclose(out["scores"].numpy(), scores, rtol=1e-5, equal_nan=True)
    got = out["items"].numpy()
    for user in range(NUM_USERS):  # never an item the user rated in training
        rated_raw = set(ids.item_raw[ids.rated[ids.indptr[user]:ids.indptr[user + 1]]])
        assert not rated_raw & set(got[user][got[user] >= 0])
    if k > 2:
        assert (got[3][2:] == -1).all() and (got[3][:2] >= 0).all()


def test_raw_ids_in_and_out_of_vocabulary(served):
    import tensorflow as tf

    model, ids, path = served
    loaded = load(path)
    users, items = np.array([0, 5, 29]), np.array([7, 0, 49])
    out = loaded.signatures["serving_default"](user=tf.constant(ids.user_raw[users]),
                                               item=tf.constant(ids.item_raw[items]))
    logits = np.asarray(model((users.astype(np.int32), items.astype(np.int32)), training=False)).reshape(-1)
    assert out["known"].numpy().all()
    np.testing.assert_allclose(out["logit"].numpy(), logits, rtol=1e-5)
    np.testing.assert_allclose(out["score"].numpy(), 1 / (1 + np.exp(-logits)), rtol=1e-5)
    # A dense id is not a raw id: never a silent row, but known False and NaN.
    unknown_user, unknown_item = int(ids.user_raw.max()) + 1, int(ids.item_raw.max()) + 1
    out = loaded.signatures["serving_default"](user=tf.constant([unknown_user, ids.user_raw[0]], tf.int64),
                                               item=tf.constant([ids.item_raw[0], unknown_item], tf.int64))
    assert out["known"].numpy().tolist() == [False, False]
    assert np.isnan(out["score"].numpy()).all() and np.isnan(out["logit"].numpy()).all()
    out = loaded.signatures["recommend"](user=tf.constant([unknown_user, ids.user_raw[1]], tf.int64),
                                         k=tf.constant(4))
    assert out["known"].numpy().tolist() == [False, True]
    assert (out["items"].numpy()[0] == -1).all() and np.isnan(out["scores"].numpy()[0]).all()
    assert (out["items"].numpy()[1] >= 0).all()
    # k defaults to 10 when called from Python; the signature (TF Serving) requires it.
    assert loaded.recommend(tf.constant(ids.user_raw[:2]))["items"].shape == (2, 10)
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be at least 1"):
        loaded.signatures["recommend"](user=tf.constant(ids.user_raw[:1]), k=tf.constant(0))


def recommend_cli(args: list[str]) -> int:
    from trainer.recommend import main

    try:
        run_console("recommend", lambda: main(args))
    except SystemExit as done:
        return done.code
    raise AssertionError("protocol.cli.run returned without exiting")


def test_ncf_recommend_prints_the_top_k_with_titles(served, tmp_path, capsys):
    model, ids, path = served
    user = 5
    items, scores = brute_force(model, ids, np.array([user]), 4)
    titles = tmp_path / "u.item"
    titles.write_bytes("".join(f"{raw}|Movie {raw} (Caf\xe9) (1995)|01-Jan-1995||http://x|0|1\n"
                               for raw in ids.item_raw[:-1]).encode("latin-1"))
    model_dir = path.rsplit("/", 1)[0]  # a run's model/ folder
    assert recommend_cli(["--model", model_dir, "--user", str(ids.user_raw[user]), "--k", "4",
                          "--titles", str(titles)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"top 4 for user {ids.user_raw[user]}:"
    for line, item, score in zip(lines[1:], items[0], scores[0]):
        rank, got_item, got_score, *title = line.split(maxsplit=3)
        assert int(got_item) == item and abs(float(got_score) - score) < 1e-4
        assert title == ([f"Movie {item} (Caf\xe9) (1995)"] if item != ids.item_raw[-1] else [])
    assert len(lines) == 5


def test_titles_of_every_movielens_format(tmp_path):
    from trainer.recommend import read_titles

    files = {"movies.dat": "1::Toy Story (1995)::Animation|Children's\n2::Caf\xe9 (1996)::Drama\n".encode("latin-1"),
             "movies.csv": 'movieId,title,genres\n1,Toy Story (1995),Animation\n2,"Café, The (1996)",Drama\n'.encode(),
             "u.item": "1|Toy Story (1995)|01-Jan-1995||http://x|0\n2|Caf\xe9 (1996)|01-Jan-1996||http://x|0\n"
             .encode("latin-1"),
             "ml-100k.item": b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                             b"1\tToy Story\t1995\tAnimation\n2\tCaf\xc3\xa9\t1996\tDrama\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        titles = read_titles(str(tmp_path / name))
        assert titles[1] == "Toy Story (1995)", name
        assert titles[2] in ("Caf\xe9 (1996)", "Caf\xe9, The (1996)"), name
    (tmp_path / "ratings.dat").write_bytes(b"1\t2\t3\t4\n")
    with pytest.raises(InvalidInput, match="not a MovieLens titles file"):
        read_titles(str(tmp_path / "ratings.dat"))


def test_ncf_recommend_reads_a_gs_model(served, gcs_bucket, capsys):
    model, ids, path = served
    storage.put_tree(path, gcs_bucket + "/run/model/saved_model")
    assert recommend_cli(["--model", gcs_bucket + "/run/model", "--user", str(ids.user_raw[0])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [int(line.split()[1]) for line in lines[1:]] == brute_force(model, ids, np.array([0]), 10)[0][0].tolist()


@pytest.mark.parametrize("args, message", [
    (["--user", "123456789012"], "user 123456789012 is not in the model's training data"),
    (["--user", "1", "--k", "0"], "ncf-recommend: --k: expected a positive integer, got 0"),
    (["--user", "x"], "--user: expected an integer user id"),
])
def test_ncf_recommend_bad_input_exits_2(served, args, message, capsys):
    assert recommend_cli(["--model", served[2], *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_ncf_recommend_missing_model_exits_2(tmp_path, capsys):
    assert recommend_cli(["--model", str(tmp_path / "nothing"), "--user", "1"]) == 2
    assert "no such model folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert recommend_cli(["--model", str(tmp_path / "empty"), "--user", "1"]) == 2
    assert "no SavedModel there" in capsys.readouterr().err


# ------------------------------------------------------------------ best vs last, through the trainer
def publish_test_ids(run: RunDir, cmd, num_users=60, num_items=120) -> Dataset:
    """dataset/ids/ for a write_run directory: raw ids 1000 + 3u and 50000 + 7i, the training
    positives taken from epoch 0 (every epoch holds each positive once)."""
    from trainer.data import read_columns, read_epoch, read_ready

    epoch = read_epoch(run, 0, cmd.run_id)
    positives = epoch.label == 1
    user, item = epoch.user[positives].astype(np.int64), epoch.item[positives].astype(np.int64)
    order = np.lexsort((item, user))
    counts = np.bincount(user, minlength=num_users)
    holdout = read_columns(run.eval_dir, read_ready(run.eval_dir, cmd.run_id, "eval", None), ("items",))["items"][:, 0]
    dataset = Dataset(name=cmd.dataset.name, fingerprint="test", num_users=num_users, num_items=num_items,
                      num_ratings=int(counts.sum()) + num_users, train_counts=counts,
                      train_items=item[order].astype(np.uint16), holdout=holdout,
                      user_ids=1000 + 3 * np.arange(num_users), item_ids=50000 + 7 * np.arange(num_items))
    publish_ids(run, dataset, cmd.run_id)
    return dataset


def run_getting_worse(url: str, epochs: int, good: int = 2):
    """write_run's learnable epochs 0..good-1, then epochs with the labels flipped: HR@10 drops."""
    cmd = command(epochs=epochs)
    run = write_run(url, cmd, epochs=good)
    dataset = publish_test_ids(run, cmd)
    rng = np.random.default_rng(5)
    pu = np.repeat(np.arange(60), dataset.train_counts)
    pi = dataset.train_items.astype(np.int64)
    for epoch in range(good, epochs):
        nu = np.repeat(pu, cmd.num_neg)
        user = np.concatenate([pu, nu]).astype(np.uint16)
        item = np.concatenate([pi, rng.integers(0, 120, len(nu))]).astype(np.uint16)
        label = np.concatenate([np.zeros(len(pu), np.uint8), np.ones(len(nu), np.uint8)])  # flipped
        order = rng.permutation(len(label))
        publish_epoch(run, cmd.run_id, epoch, user[order], item[order], label[order])
    return cmd, run, dataset


def exported_hr(run: RunDir, dataset: Dataset) -> tuple[float, float]:
    """HR@10 / NDCG@10 of the exported SavedModel on the run's eval data, through raw ids."""
    import tensorflow as tf

    from trainer import evaluation
    from trainer.data import read_columns, read_ready

    cols = read_columns(run.eval_dir, read_ready(run.eval_dir, run_id_of(run), "eval", None), ("user", "items", "mask"))
    users = np.repeat(cols["user"].astype(np.int64), cols["items"].shape[1])
    items = cols["items"].reshape(-1).astype(np.int64)
    out = load(storage.join(run.model, "saved_model")).signatures["serving_default"](
        user=tf.constant(dataset.user_ids[users]), item=tf.constant(dataset.item_ids[items]))
    assert out["known"].numpy().all()
    logits = out["logit"].numpy().reshape(cols["items"].shape)
    return evaluation.metrics(evaluation.ranks(logits, cols["mask"]))


def run_id_of(run: RunDir) -> str:
    from protocol import Command

    return storage.read_message(run.command, Command).run_id


@pytest.mark.slow
@pytest.mark.parametrize("which", ["best", "last"])
def test_exports_the_best_epoch_or_the_last(tmp_path, which, capsys):
    cmd, run, dataset = run_getting_worse(str(tmp_path / "run"), epochs=5)
    assert run_cli(trainer_args(run.url, cmd, "--export", which, *FAST)) == 0
    records = metrics(run.url)
    best = max(records, key=lambda m: m.hr_at_10)
    assert best.epoch < 3 and records[-1].hr_at_10 < best.hr_at_10  # the run did get worse
    wanted = best if which == "best" else records[-1]
    result = storage.read_message(run.result, Result)
    assert (result.exported, result.exported_epoch, result.exported_reason) == (which, wanted.epoch, None)
    assert (result.exported_hr_at_10, result.exported_ndcg_at_10) == (wanted.hr_at_10, wanted.ndcg_at_10)
    assert result.best_epoch == best.epoch
    hr, ndcg = exported_hr(run, dataset)
    assert hr == pytest.approx(wanted.hr_at_10, abs=1e-9) and ndcg == pytest.approx(wanted.ndcg_at_10, abs=1e-6)
    if which == "last":
        return
    # Restarted after the end with result.json gone: no epoch to train, and the best
    # epoch's checkpoint is no longer kept (KEEP = 2): the last is exported, and it says so.
    storage.delete(run.result)
    storage.delete(run.model)
    capsys.readouterr()
    assert run_cli(trainer_args(run.url, cmd, *FAST)) == 0
    result = storage.read_message(run.result, Result)
    assert (result.exported, result.exported_epoch) == ("last", records[-1].epoch)
    assert f"the best epoch ({best.epoch})'s checkpoint was gone" in result.exported_reason
    assert result.exported_hr_at_10 == records[-1].hr_at_10
    assert "has no checkpoint any more" in capsys.readouterr().err
    assert exported_hr(run, dataset)[0] == pytest.approx(records[-1].hr_at_10, abs=1e-9)


@pytest.mark.slow
def test_a_restart_takes_the_best_weights_from_a_kept_checkpoint(tmp_path):
    """Best epoch 2 of 4, restart after the end: its checkpoint (ckpt-000003) is still kept,
    though it is not the latest (KEEP = 2)."""
    cmd, run, dataset = run_getting_worse(str(tmp_path / "run"), epochs=4, good=2)
    assert run_cli(trainer_args(run.url, cmd, *FAST)) == 0
    records = metrics(run.url)
    best = max(records, key=lambda m: m.hr_at_10)
    storage.delete(run.result)
    storage.delete(run.model)
    assert run_cli(trainer_args(run.url, cmd, *FAST)) == 0
    result = storage.read_message(run.result, Result)
    # The situation this test is about (fixed seeds): the best epoch is the one before the last.
    assert best.epoch == 2, [m.hr_at_10 for m in records]
    assert (result.exported, result.exported_epoch, result.exported_reason) == ("best", best.epoch, None)
    assert exported_hr(run, dataset)[0] == pytest.approx(best.hr_at_10, abs=1e-9)


# ------------------------------------------------------------------ the generator's side
@pytest.mark.slow
def test_id_maps_are_published_and_cached(tmp_path, ml100k, caplog):
    from generator import cache
    from generator.datasets import prepare
    from generator.ratings import parse
    from trainer.serving import read_ids

    caplog.set_level("INFO")  # the cache's INFO line is asserted below, whatever ran before this test
    spec = DatasetSpec(name="ml-100k", ratings=str(ml100k))
    cache_dir = str(tmp_path / "cache")
    first = prepare(spec, cache_dir)
    assert cache.entry_url(cache_dir, "ml-100k", first.fingerprint).endswith(f"-v{cache.VERSION}")
    user, item, _ = parse("ml-100k", ml100k.read_bytes(), str(ml100k))
    assert first.user_ids.tolist() == list(range(1, 944))  # every ml-100k user rated at least 20 movies
    assert first.item_ids.tolist() == sorted(set(item.tolist()))
    rated = set(zip(user.tolist(), item.tolist()))
    indptr = first.indptr
    for u in (0, 195, 942):  # dense -> raw gives pairs that are in the ratings file
        assert (int(first.user_ids[u]), int(first.item_ids[first.holdout[u]])) in rated
        for i in first.train_items[indptr[u]:indptr[u + 1]]:
            assert (int(first.user_ids[u]), int(first.item_ids[i])) in rated
    second = prepare(spec, cache_dir)
    assert "reusing the preprocessed" in caplog.text
    np.testing.assert_array_equal(second.user_ids, first.user_ids)
    np.testing.assert_array_equal(second.item_ids, first.item_ids)

    run = RunDir(str(tmp_path / "run"))
    storage.ensure_writable(run.url)
    publish_ids(run, first, "r1")
    publish_ids(run, second, "r1")  # a restarted generator: same bytes, accepted
    assert sorted(storage.listdir(run.ids_dir)) == ["ids.json", "items", "train", "users"]
    ids = read_ids(run, "r1", first.meta("r1"))
    np.testing.assert_array_equal(ids.user_raw, first.user_ids)
    np.testing.assert_array_equal(ids.item_raw, first.item_ids)
    np.testing.assert_array_equal(ids.indptr, first.indptr)
    np.testing.assert_array_equal(ids.rated, first.train_items)
    other = Dataset(**{**first.__dict__, "item_ids": first.item_ids + 1})
    with pytest.raises(ForeignRun, match=r"ids.json \(run r1\) is of another run or of different settings \(items: "):
        publish_ids(run, other, "r1")
    storage.write_bytes(storage.join(run.ids_dir, "items"), b"NCFPART1 damaged")
    with pytest.raises(InvalidInput, match="items"):
        read_ids(run, "r1", first.meta("r1"))
    assert read_ids(RunDir(str(tmp_path / "none")), "r1", first.meta("r1")) is None


def test_synthetic_id_maps_are_the_recipes_ids():
    """Synthetic recipes number users and items from 1 (as MovieLens does): the maps say so."""
    from generator.preprocess import split
    from generator.ratings import RawRatings

    raw = RawRatings(np.repeat(np.arange(1, 4), 20), np.tile(np.arange(1, 21), 3), np.arange(60), "recipe:x")
    dataset = split("synthetic-small", raw)
    assert dataset.user_ids.tolist() == [1, 2, 3] and dataset.item_ids.tolist() == list(range(1, 21))


@pytest.mark.slow
def test_a_failed_child_generator_is_named_with_its_own_message(tmp_path):
    from trainer.child import check_alive

    run = RunDir(str(tmp_path / "run"))
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    child.wait()
    child.status_url = run.status("generator")
    with pytest.raises(PeerError, match=r"^the generator \(child process\) exited with code 1$"):
        check_alive(child)  # no heartbeat: the exit code alone
    why = "OSError: could not download https://files.grouplens.org/datasets/movielens/ml-1m.zip (timed out)"
    storage.overwrite(run.status("generator"), Status(side="generator", state="failed", run_id="r", epoch=None,
                                                      epochs_done=0, pid=child.pid, message=why))
    with pytest.raises(PeerError) as raised:
        check_alive(child)
    assert str(raised.value) == f"the generator (child process) exited with code 1: {why}"
    storage.overwrite(run.status("generator"), Status(side="generator", state="failed", run_id="r", epoch=None,
                                                      epochs_done=0, pid=child.pid + 1, message="another process"))
    with pytest.raises(PeerError, match=r"code 1$"):
        check_alive(child)  # a heartbeat of another process is not this child's last words
