"""NeuMF (He et al. 2017; TF official NCF; MLPerf v0.5 recommendation), in Keras 3.

GMF: user and item embeddings of mf_dim, element-wise product.
MLP: user and item embeddings of layers[0] / 2, concatenated, Dense+ReLU for layers[1:].
Both are concatenated into one Dense(1) logit, kept in float32 under mixed precision.
Initialisation as MLPerf's reference: embeddings N(0, 0.01), hidden layers Glorot
uniform, the logit layer LeCun uniform.
"""

from __future__ import annotations

import keras

from .config import MLPERF_ADAM


def build_neumf(num_users: int, num_items: int, mf_dim: int, layers: list[int], l2: float = 0.0) -> keras.Model:
    """l2: L2 penalty on the embeddings (0 = none, as MLPerf; small data sets overfit without it)."""
    if len(layers) < 1 or layers[0] % 2:
        raise ValueError(f"layers must start with an even width, got {layers}")
    # Ids arrive as uint16 or uint32 (protocol.parts.id_dtype); Embedding casts them to
    # int32 inside the compiled step, so the host feeds half the bytes.
    user = keras.Input(shape=(), dtype="int32", name="user")
    item = keras.Input(shape=(), dtype="int32", name="item")

    def embedding(count: int, dim: int, name: str) -> keras.layers.Embedding:
        return keras.layers.Embedding(count, dim, embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01),
                                      embeddings_regularizer=keras.regularizers.L2(l2) if l2 else None, name=name)

    gmf = keras.layers.Multiply(name="gmf")([embedding(num_users, mf_dim, "mf_user")(user),
                                             embedding(num_items, mf_dim, "mf_item")(item)])
    mlp = keras.layers.Concatenate(name="mlp_input")([embedding(num_users, layers[0] // 2, "mlp_user")(user),
                                                      embedding(num_items, layers[0] // 2, "mlp_item")(item)])
    for index, width in enumerate(layers[1:]):
        mlp = keras.layers.Dense(width, activation="relu", name=f"mlp_{index}")(mlp)
    both = keras.layers.Concatenate(name="neumf")([gmf, mlp])
    logit = keras.layers.Dense(1, kernel_initializer="lecun_uniform", dtype="float32", name="logit")(both)
    return keras.Model(inputs=[user, item], outputs=logit, name="neumf")


class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate rising linearly over the first `warmup_steps` steps (step k trains
    at (k + 1) / warmup_steps of it), then constant. Large batches (MLPerf's 1M) start with
    Adam's first steps at full size otherwise. The step is the optimizer's iteration count,
    which checkpoints keep, so a resumed run continues the ramp where it stopped."""

    def __init__(self, learning_rate: float, warmup_steps: int):
        self.learning_rate, self.warmup_steps = learning_rate, warmup_steps

    def __call__(self, step):
        ramp = (keras.ops.cast(step, "float32") + 1.0) / float(self.warmup_steps)
        return self.learning_rate * keras.ops.minimum(1.0, ramp)

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


def compile_neumf(model: keras.Model, learning_rate: float, xla: bool = False, adam: dict | None = None,
                  warmup_steps: int = 0, steps_per_execution: int = 1) -> keras.Model:
    """Adam (MLPerf's beta_1, beta_2, epsilon unless `adam` gives others) and sigmoid
    cross-entropy on the logit (in the strategy's scope). warmup_steps > 0: LinearWarmup.
    steps_per_execution: batches per compiled call of model.fit (the JAX path's loop)."""
    settings = {**MLPERF_ADAM, **(adam or {})}
    rate = LinearWarmup(learning_rate, warmup_steps) if warmup_steps else learning_rate
    optimizer = keras.optimizers.Adam(rate, beta_1=settings["adam_beta_1"], beta_2=settings["adam_beta_2"],
                                      epsilon=settings["adam_epsilon"])
    model.compile(optimizer=optimizer, loss=keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=xla,
                  steps_per_execution=steps_per_execution)
    return model


def epoch_trainer(model: keras.Model, distribution, jit_compile: bool):
    """Returns train_epoch(blocks) -> the epoch's loss, for a dataset from data.blocks.

    Each batch is one optimizer step through Keras' own train_step (compiled loss, L2
    penalty, loss scaling under mixed_float16, Adam), in the data's order. One compiled
    call (XLA if jit_compile) trains a whole block, so tf.data and Python are paid once per
    block, not per batch. The loop over a block's batches runs outside the replicas, as
    Keras' steps_per_execution loop does: MirroredStrategy cannot all-reduce gradients in
    control flow inside a replica. The loss is Keras' mean over the epoch's batches
    (weighted by their sizes), as model.fit reports it."""
    import tensorflow as tf

    with distribution.scope():
        if not model.optimizer.built:  # its variables must exist before the first compiled call
            model.optimizer.build(model.trainable_variables)

    @tf.autograph.experimental.do_not_convert
    def train_batch(block, k):
        (user, item), label = block
        return model.train_step(((user[:, k], item[:, k]), label[:, k]))

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def train_block(block):
        for k in tf.range(tf.shape(distribution.experimental_local_results(block[1])[0])[1]):
            distribution.run(train_batch, args=(block, k))

    def train_epoch(blocks) -> float:
        model.reset_metrics()
        for block in distribution.experimental_distribute_dataset(blocks):
            train_block(block)
        return float(model.get_metrics_result()["loss"])

    return train_epoch
