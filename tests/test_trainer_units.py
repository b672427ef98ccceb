"""Trainer unit tests: HR/NDCG by hand, the NeuMF graph, strategy selection, command.json."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from protocol import Command, InvalidInput, RunDir, storage
from trainer import evaluation, strategy


# ----------------------------------------------------------------------------- metrics
def hand_example():
    """Four users, 1 positive + 12 candidates each (column 0 is the positive)."""
    low = [0.0] * 12
    scores = np.array([
        # positive 0.5: one higher (0.9), one tie (0.5, counts against it), one masked 0.7 (ignored) -> rank 2
        [0.5, 0.9, 0.5, 0.1, 0.7] + low[:8],
        # positive 0.3: eleven negatives at 0.4 of which two are masked duplicates -> rank 9 (a hit)
        [0.3] + [0.4] * 11 + [0.1],
        # positive 0.8 above everything -> rank 0
        [0.8] + [0.2] * 12,
        # positive 0.6: ten valid negatives tie with it -> rank 10 (a miss)
        [0.6] + [0.6] * 10 + [0.7, 0.1],
    ], dtype=np.float32)
    mask = np.ones_like(scores, dtype=np.uint8)
    mask[0, 4] = 0
    mask[1, 2] = mask[1, 5] = 0
    mask[3, 11] = 0  # the 0.7 is masked
    return scores, mask


def test_ranks_hr_ndcg_by_hand():
    scores, mask = hand_example()
    rank = evaluation.ranks(scores, mask)
    assert rank.tolist() == [2, 9, 0, 10]
    hr, ndcg = evaluation.metrics(rank)
    assert hr == pytest.approx(3 / 4)
    assert ndcg == pytest.approx((math.log(2) / math.log(4) + math.log(2) / math.log(11) + 1.0 + 0.0) / 4)


def test_nan_positive_is_a_miss():
    scores = np.array([[np.nan, 0.1, 0.2]], dtype=np.float32)
    assert evaluation.ranks(scores, np.ones((1, 3), np.uint8)).tolist() == [3]


@pytest.mark.parametrize("batch_candidates", [1, 13, 26, 10_000])
def test_evaluate_in_user_blocks(batch_candidates):
    scores, mask = hand_example()
    users = np.arange(4, dtype=np.uint32)
    items = np.arange(4 * 13, dtype=np.uint16).reshape(4, 13)  # item id = position in scores
    table = scores.reshape(-1)
    seen = []

    def score(u, i):
        seen.append(len(u))
        assert np.array_equal(u, i // 13)  # each candidate scored with its own user
        return table[i]

    hr, ndcg = evaluation.evaluate(score, users, items, mask, batch_candidates)
    assert hr == pytest.approx(0.75)
    assert ndcg == pytest.approx((0.5 + math.log(2) / math.log(11) + 1.0) / 4)
    assert max(seen) == max(13, min(52, batch_candidates // 13 * 13))


# ----------------------------------------------------------------------------- model
def test_neumf_shapes_and_logit():
    import keras

    from trainer.model import build_neumf

    keras.mixed_precision.set_global_policy("float32")
    model = build_neumf(num_users=10, num_items=20, mf_dim=8, layers=[16, 8, 4])
    assert model.count_params() == (10 + 20) * 8 + (10 + 20) * 8 + (16 * 8 + 8) + (8 * 4 + 4) + (8 + 4 + 1)
    users = np.array([0, 3, 9], np.uint16)  # the generator's id dtype
    items = np.array([19, 0, 7], np.uint16)
    out = np.asarray(model((users, items)))
    assert out.shape == (3, 1) and out.dtype == np.float32

    w = {v.path.split("/")[0] + "/" + v.name: v.numpy() for v in model.weights}
    gmf = w["mf_user/embeddings"][users] * w["mf_item/embeddings"][items]
    x = np.concatenate([w["mlp_user/embeddings"][users], w["mlp_item/embeddings"][items]], axis=1)
    for name in ("mlp_0", "mlp_1"):
        x = np.maximum(x @ w[f"{name}/kernel"] + w[f"{name}/bias"], 0)
    logit = np.concatenate([gmf, x], axis=1) @ w["logit/kernel"] + w["logit/bias"]
    np.testing.assert_allclose(out, logit, rtol=1e-5, atol=1e-6)


def test_neumf_mixed_precision_keeps_logit_float32():
    import keras

    from trainer.model import build_neumf

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_neumf(5, 6, 4, [8, 4])
        assert model.get_layer("mlp_0").compute_dtype == "bfloat16"
        out = model((np.array([1, 2]), np.array([3, 4])))
        assert str(out.dtype) in ("float32", "<dtype: 'float32'>")
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ----------------------------------------------------------------------------- input blocks and the epoch loop
def test_blocks_keep_every_batch_in_order():
    from trainer import data

    n, batch, steps = 2 * 4 * 3 + 2 * 4 + 3, 4, 3  # two full blocks, two more batches, a partial batch
    user, item, label = np.arange(n, dtype=np.uint32), np.arange(n, dtype=np.uint16) % 7, np.arange(n) % 2 == 0
    blocks = [tuple(np.asarray(t) for t in (u, i, y)) for (u, i), y in data.blocks(user, item, label, batch, steps)]
    assert [b[0].shape for b in blocks] == [(4, 3), (4, 3), (4, 2), (3, 1)]
    # Column k of a block is one batch; the batches follow the columns' order.
    for column, part in ((user, 0), (item, 1), (label, 2)):
        np.testing.assert_array_equal(np.concatenate([b[part].T.ravel() for b in blocks]), column)


@pytest.mark.parametrize("xla", [False, pytest.param(True, marks=pytest.mark.slow)])  # XLA compiles for seconds
def test_epoch_trainer_equals_keras_fit(xla):
    """Training on blocks gives the very weights and loss of Keras' fit on one batch per step."""
    import keras
    import tensorflow as tf

    from trainer import data
    from trainer.model import build_neumf, compile_neumf, epoch_trainer

    rng = np.random.default_rng(1)
    n, batch = 3 * 4 * 64 + 2 * 64 + 17, 64
    user = rng.integers(0, 50, n, dtype=np.uint32)
    item = rng.integers(0, 40, n).astype(np.uint16)
    label = (rng.random(n) < 0.3).astype(np.uint8)

    def trained(use_blocks: bool):
        keras.mixed_precision.set_global_policy("float32")
        keras.utils.set_random_seed(0)
        model = compile_neumf(build_neumf(50, 40, 4, [8, 4], l2=1e-4), learning_rate=0.01, xla=xla)
        if use_blocks:
            train_epoch = epoch_trainer(model, tf.distribute.get_strategy(), xla)
            losses = [train_epoch(data.blocks(user, item, label, batch, steps=4)) for _ in range(2)]
        else:
            batches = tf.data.Dataset.from_tensor_slices(((user, item), label)).batch(batch)
            losses = [model.fit(batches, epochs=1, verbose=0).history["loss"][-1] for _ in range(2)]
        return losses, model.get_weights()

    (loss, weights), (fit_loss, fit_weights) = trained(True), trained(False)
    np.testing.assert_allclose(loss, fit_loss, rtol=1e-6)
    for w, f in zip(weights, fit_weights):
        np.testing.assert_allclose(w, f, rtol=1e-6, atol=1e-7)


def test_neumf_rejects_odd_first_layer():
    from trainer.model import build_neumf

    with pytest.raises(ValueError):
        build_neumf(5, 6, 4, [7, 4])


# ----------------------------------------------------------------------------- strategy
@pytest.mark.parametrize("hardware, mixed, kind, precision", [
    (strategy.Hardware(tpu=object(), gpus=()), True, "tpu", "mixed_bfloat16"),
    (strategy.Hardware(tpu=object(), gpus=("/physical_device:GPU:0",)), False, "tpu", "float32"),
    (strategy.Hardware(gpus=("/physical_device:GPU:0", "/physical_device:GPU:1")), True, "multi_gpu", "mixed_float16"),
    (strategy.Hardware(gpus=("/physical_device:GPU:0",)), True, "gpu", "mixed_float16"),
    (strategy.Hardware(gpus=("/physical_device:GPU:0",)), False, "gpu", "float32"),
    (strategy.Hardware(), False, "cpu", "float32"),
    (strategy.Hardware(), True, "cpu", "mixed_bfloat16"),
])
def test_strategy_choice(hardware, mixed, kind, precision):
    choice = strategy.choose(hardware, mixed)
    assert (choice.kind, choice.precision) == (kind, precision)


def test_strategy_objects(monkeypatch):
    import tensorflow as tf

    made = []
    monkeypatch.setattr(tf.distribute, "TPUStrategy", lambda resolver: made.append(resolver) or "tpu-strategy")
    resolver = object()
    assert strategy.make(strategy.Choice("tpu", "float32", 0), strategy.Hardware(tpu=resolver)) == "tpu-strategy"
    assert made == [resolver]
    mirrored = strategy.make(strategy.Choice("multi_gpu", "float32", 2), strategy.Hardware(gpus=("a", "b")))
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    default = strategy.make(strategy.Choice("cpu", "float32", 1), strategy.Hardware())
    assert default is tf.distribute.get_strategy()


def test_detect_here_matches_tensorflow(monkeypatch):
    """detect() on this machine (TPU probing off) reports the GPUs TensorFlow lists, and
    choose() picks the matching kind: cpu, gpu or multi_gpu."""
    import tensorflow as tf

    for name in strategy.TPU_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(strategy.glob, "glob", lambda pattern: [])
    hardware = strategy.detect()
    gpus = tuple(d.name for d in tf.config.list_physical_devices("GPU"))
    assert hardware.tpu is None and hardware.gpus == gpus
    expected = {0: "cpu", 1: "gpu"}.get(len(gpus), "multi_gpu")
    assert strategy.choose(hardware).kind == expected


# ----------------------------------------------------------------------------- command.json
def config(url, *extra):
    from trainer.config import parse_args

    return parse_args(["--data-dir", url, "--dataset", "synthetic-small", *extra])


def test_dataset_defaults_and_overrides(tmp_path, capsys):
    from trainer.config import parse_args

    small = config(str(tmp_path))
    assert (small.batch_size, small.learning_rate, small.mf_dim, small.layers, small.num_neg, small.epochs) == \
        (256, 0.001, 16, [64, 32, 16, 8], 4, 20)
    ml100k = parse_args(["--data-dir", "x", "--dataset", "ml-100k"])
    assert (ml100k.batch_size, ml100k.learning_rate, ml100k.mf_dim, ml100k.layers) == \
        (1024, 0.002, 16, [64, 32, 16, 8])
    large = parse_args(["--data-dir", "x", "--dataset", "ml-20m"])
    assert (large.batch_size, large.learning_rate, large.mf_dim, large.layers, large.num_neg, large.epochs) == \
        (2048, 0.0005, 64, [256, 256, 128, 64], 4, 20)
    custom = config(str(tmp_path), "--layers", "32,16", "--batch-size", "512", "--mf-dim", "8")
    assert (custom.layers, custom.batch_size, custom.mf_dim) == ([32, 16], 512, 8)
    with pytest.raises(SystemExit) as error:
        config(str(tmp_path), "--layers", "31,16")
    assert error.value.code == 2
    assert capsys.readouterr().err == ("ncf-trainer: --layers: expected the first width to be even (the user "
                                       "and the item embedding side by side), got 31\n")



def test_recipe_replaces_the_preset_and_flags_win(capsys):
    from trainer.config import parse_args

    large = parse_args(["--data-dir", "x", "--dataset", "ml-20m"])
    assert (large.adam_beta_1, large.adam_beta_2, large.adam_epsilon, large.warmup_steps) == (0.9, 0.999, 1e-8, 0)
    mlperf = parse_args(["--data-dir", "x", "--dataset", "ml-20m", "--recipe", "mlperf-v0.5-large-batch"])
    assert (mlperf.batch_size, mlperf.learning_rate, mlperf.adam()) == \
        (1_048_576, 0.0045, {"adam_beta_1": 0.25, "adam_beta_2": 0.5, "adam_epsilon": 1e-8})
    assert mlperf.model_config()["adam_beta_2"] == 0.5  # a checkpoint from other Adam settings is not resumed
    reference = parse_args(["--data-dir", "x", "--dataset", "ml-20m", "--recipe", "ml-20mx16x32-reference",
                            "--learning-rate", "0.001", "--warmup-steps", "50"])
    assert (reference.batch_size, reference.learning_rate, reference.adam_beta_1, reference.warmup_steps) == \
        (65536, 0.001, 0.9, 50)
    with pytest.raises(SystemExit) as error:
        parse_args(["--data-dir", "x", "--dataset", "ml-20m", "--adam-beta-2", "1"])
    assert error.value.code == 2
    assert capsys.readouterr().err == "ncf-trainer: --adam-beta-2: expected a number in [0, 1), got 1\n"


def test_adam_settings_and_linear_warmup_reach_the_optimizer():
    from trainer.model import LinearWarmup, build_neumf, compile_neumf

    ramp = LinearWarmup(0.01, 4)
    assert [round(float(ramp(step)), 6) for step in (0, 1, 3, 10)] == [0.0025, 0.005, 0.01, 0.01]
    model = compile_neumf(build_neumf(5, 4, 2, [4, 2]), 0.01, adam={"adam_beta_1": 0.25, "adam_beta_2": 0.5},
                          warmup_steps=4)
    optimizer = model.optimizer
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.25, 0.5, 1e-8)
    assert float(optimizer.learning_rate) == pytest.approx(0.0025)  # step 0 of the ramp

def test_command_publish_resume_mismatch(run_url):
    from trainer import train

    run = RunDir(run_url)
    storage.ensure_writable(run_url)
    first = train.publish_or_resume(run, config(run_url, "--epochs", "3"))
    assert re.fullmatch(r"synthetic-small-\d{8}-\d{6}-[0-9a-f]{4}", first.run_id)
    assert storage.read_message(run.command, Command) == first
    original = storage.read_bytes(run.command)

    again = train.publish_or_resume(run, config(run_url, "--epochs", "3"))
    assert again.run_id == first.run_id

    with pytest.raises(InvalidInput) as error:
        train.publish_or_resume(run, config(run_url, "--epochs", "5", "--seed", "7"))
    message = str(error.value)
    assert "epochs: 3 in the file, 5 from the flags" in message and "seed: 0 in the file, 7" in message
    assert first.run_id in message
    assert storage.read_bytes(run.command) == original


@pytest.mark.slow  # the whole trainer CLI in process
def test_command_mismatch_exits_2_via_cli(tmp_path, capsys):
    from testkit.trainer_support import run_cli

    url = str(tmp_path / "run")
    assert run_cli(["--data-dir", url, "--dataset", "synthetic-small", "--epochs", "3", "--start-timeout", "0.5"]) == 3
    before = (tmp_path / "run" / "command.json").read_bytes()
    assert run_cli(["--data-dir", url, "--dataset", "synthetic-small", "--epochs", "4"]) == 2
    assert "epochs: 3 in the file, 4 from the flags" in capsys.readouterr().err
    assert (tmp_path / "run" / "command.json").read_bytes() == before
