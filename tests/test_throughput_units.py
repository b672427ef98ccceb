"""Units of issue 12 (keeping an accelerator fed): the background writer, checkpoint pieces,
snapshots, concurrent part reads, the generator's bounded upload queue, TensorBoard files."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from testkit.builders import RUN_ID, history
from protocol import CorruptData, EpochMetrics, Ready, RunDir, parts, storage
from protocol.background import BackgroundWriter


# ----------------------------------------------------------------------------- background writer
def test_background_writer_keeps_order_and_surfaces_the_first_error():
    done = []
    with BackgroundWriter() as writes:
        for i in range(20):
            writes.submit(lambda i=i: (time.sleep(0.001 * (i % 3)), done.append(i)))
        writes.flush()
        assert done == list(range(20))

    writes = BackgroundWriter()
    writes.submit(done.clear)
    writes.submit(lambda: (_ for _ in ()).throw(FileNotFoundError("gone")), what="a delete")
    writes.submit(done.append, "skipped: after a failure the order no longer holds")
    with pytest.raises(FileNotFoundError, match="gone"):
        writes.flush()
    with pytest.raises(FileNotFoundError):
        writes.submit(done.append, "refused")
    writes.close(raise_errors=False)
    assert done == []


def test_background_writer_submit_does_not_wait():
    release = threading.Event()
    with BackgroundWriter() as writes:
        started = time.monotonic()
        writes.submit(release.wait, 5)
        writes.submit(release.wait, 5)
        assert time.monotonic() - started < 0.1
        release.set()


# ----------------------------------------------------------------------------- checkpoints
def _state(epochs_done=1):
    from trainer import checkpoint

    return checkpoint.State(RUN_ID, epochs_done, False, 1.0, {"mf_dim": 8}, history(epochs_done))


@pytest.fixture
def small_model():
    import keras

    from trainer.model import build_neumf, compile_neumf

    keras.utils.set_random_seed(0)
    model = compile_neumf(build_neumf(50, 40, 8, [16, 8], 0.0), 0.01, False)
    model.optimizer.build(model.trainable_variables)
    return model


def test_checkpoint_pieces_round_trip_and_are_verified(run_url, small_model):
    from concurrent.futures import ThreadPoolExecutor

    from trainer import checkpoint

    run = RunDir(run_url)
    storage.ensure_writable(run.url)
    arrays = checkpoint.snapshot(small_model)
    with ThreadPoolExecutor(4) as pool:  # small pieces: most of them span two arrays
        pointer = checkpoint.upload(run, arrays, _state(1), pool, piece_bytes=1000)
    assert len(pointer.pieces) == -(-pointer.size // 1000) > 3
    saved = checkpoint.load_state(run, RUN_ID, {"mf_dim": 8})
    assert saved.state.epochs_done == 1 and len(saved.state.history) == 1
    back = checkpoint.read_arrays(saved)
    assert list(back) == list(arrays) and all(np.array_equal(back[k], arrays[k]) for k in arrays)

    piece = storage.join(saved.url, pointer.pieces[2].name)
    data = bytearray(storage.read_bytes(piece))
    data[5] ^= 1
    storage.write_bytes(piece, bytes(data))
    with pytest.raises(CorruptData, match="piece-00002"):
        checkpoint.read_arrays(saved)


def test_snapshot_keeps_its_values_while_training_goes_on(small_model):
    """The snapshot may share a variable's buffer on CPU; TensorFlow copies before updating it."""
    from trainer import checkpoint

    arrays = checkpoint.snapshot(small_model)
    copies = {k: v.copy() for k, v in arrays.items()}
    users = np.arange(32, dtype=np.int32) % 50
    small_model.train_on_batch((users, users % 40), (users % 2).astype(np.float32))
    changed = [k for k, v in checkpoint.snapshot(small_model).items() if not np.array_equal(v, copies[k])]
    assert changed  # training changed the model ...
    assert all(np.array_equal(arrays[k], copies[k]) for k in arrays)  # ... not the snapshot


def test_one_checkpoint_in_flight_and_waits_are_counted(tmp_path, small_model, monkeypatch):
    from trainer import checkpoint

    run = RunDir(str(tmp_path / "run"))
    storage.ensure_writable(run.url)
    landed, release = [], threading.Event()
    real_write = storage.write_bytes

    def slow_write(url, data):
        release.wait(10)
        real_write(url, data)

    monkeypatch.setattr(storage, "write_bytes", slow_write)
    ckpt = checkpoint.Checkpointer(run, on_landed=landed.append)
    stall = ckpt.start(small_model, _state(1))
    assert stall < 1.0 and ckpt.in_flight() and not storage.exists(checkpoint.pointer_url(run))
    with pytest.raises(RuntimeError, match="in flight"):
        ckpt.start(small_model, _state(2))
    threading.Timer(0.3, release.set).start()
    assert ckpt.wait() >= 0.2
    assert landed == [1] and storage.exists(checkpoint.pointer_url(run))
    ckpt.start(small_model, _state(2))
    ckpt.close()
    assert landed == [1, 2] and ckpt.wait() == 0.0


# ----------------------------------------------------------------------------- reads
def test_concurrent_reads_fill_the_columns_in_part_order(tmp_path):
    from trainer import data

    run = RunDir(str(tmp_path / "run"))
    folder = run.epoch_dir(0)
    n = 10_007
    user, item = np.arange(n, dtype=np.uint32), (np.arange(n) % 300).astype(np.uint16)
    label = (np.arange(n) % 5 == 0).astype(np.uint8)
    infos = [parts.write(storage.join(folder, RunDir.part_name(i)), {"user": user[idx], "item": item[idx],
                                                                        "label": label[idx]})
             for i, idx in enumerate(np.array_split(np.arange(n), 13))]
    storage.publish_once(RunDir.ready(folder), Ready(run_id=RUN_ID, kind="train", epoch=0, num_examples=n,
                                                     parts=infos))
    epoch = data.read_epoch(run, 0, RUN_ID, threads=5)
    assert np.array_equal(epoch.user, user) and np.array_equal(epoch.item, item)
    assert np.array_equal(epoch.label, label) and epoch.user.dtype == np.uint32


# ----------------------------------------------------------------------------- generator uploads
def test_epoch_writer_holds_a_bounded_number_of_parts(tmp_path, monkeypatch):
    from generator import sampling
    from generator.preprocess import Dataset

    rng = np.random.default_rng(0)
    train = np.concatenate([rng.choice(200, 10, replace=False) for _ in range(300)]).astype(np.uint16)
    dataset = Dataset(name="synthetic-small", fingerprint="recipe:x", num_users=300, num_items=200,
                      num_ratings=3300, train_counts=np.full(300, 10, np.int64), train_items=train,
                      holdout=np.zeros(300, np.uint16))
    in_flight, peak, lock = [0], [0], threading.Lock()
    real = parts.write_encoded

    def slow(url, part):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.01)
        try:
            return real(url, part)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(parts, "write_encoded", slow)
    with sampling.EpochWriter(dataset, seed=1, num_neg=4, workers=2, part_examples=500,
                              upload_concurrency=3) as writer:
        assert writer.queued_parts == 6
        first = writer.start(0, str(tmp_path / "e0"))
        second = writer.start(1, str(tmp_path / "e1"))  # sampled while epoch 0 uploads
        listing0, listing1 = first.result(), second.result()
    assert len(listing0) > 10 and peak[0] <= 3
    assert [p.name for p in listing0] == [RunDir.part_name(i) for i in range(len(listing0))]
    assert sorted(storage.listdir(str(tmp_path / "e1"))) == [p.name for p in listing1]


# ----------------------------------------------------------------------------- TensorBoard
def test_tensorboard_event_file_parses_with_the_scalars(tmp_path):
    import tensorflow as tf

    from trainer import tensorboard

    run = RunDir(str(tmp_path / "run"))
    history = [EpochMetrics(epoch=e, hr_at_10=0.1 * e, ndcg_at_10=0.05 * e, loss=1.0 / (e + 1), examples_per_s=1e6,
                            data_wait_s=0.5 if e == 0 else 0.0, train_s=2.0, eval_s=1.0, time=1000.0 + e,
                            checkpoint_wait_s=0.25 * e) for e in range(3)]
    tensorboard.write(run, history, started=999.0)
    path = tensorboard.url(run)
    assert path.startswith(storage.join(run.url, "tensorboard", "events.out.tfevents."))
    events = list(tf.compat.v1.train.summary_iterator(path))
    assert events[0].file_version == "brain.Event:2"
    scalars = {}
    for event in events[1:]:
        for value in event.summary.value:
            scalars[(value.tag, event.step)] = value.simple_value
    assert {tag for tag, _ in scalars} == {"HR@10", "NDCG@10", "loss", "examples_per_s", "data_wait_s",
                                           "checkpoint_wait_s"}
    assert scalars[("HR@10", 2)] == pytest.approx(0.2) and scalars[("checkpoint_wait_s", 1)] == 0.25
    assert scalars[("data_wait_s", 0)] == 0.5 and [e.wall_time for e in events[1:]] == [1000.0, 1001.0, 1002.0]


def test_old_metrics_lines_without_checkpoint_wait_still_read():
    line = (b'{"data_wait_s": 0.0, "epoch": 0, "eval_s": 1.0, "examples_per_s": 5.0, "hr_at_10": 0.5, "loss": 0.6, '
            b'"ndcg_at_10": 0.3, "time": 1.0, "train_s": 2.0}')
    assert EpochMetrics.from_json(line).checkpoint_wait_s == 0.0
