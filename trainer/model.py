"""NeuMF (He et al. 2017; TF official NCF; MLPerf v0.5 recommendation), in Keras 3.

GMF: user and item embeddings of mf_dim, element-wise product.
MLP: user and item embeddings of layers[0] / 2, concatenated, Dense+ReLU for layers[1:].
Both are concatenated into one Dense(1) logit, kept in float32 under mixed precision.
Initialisation as MLPerf's reference: embeddings N(0, 0.01), hidden layers Glorot
uniform, the logit layer LeCun uniform.
"""

from __future__ import annotations

import keras


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
