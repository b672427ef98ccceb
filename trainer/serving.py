"""The serving module: a SavedModel on the dataset's raw ids (MovieLens' own user and movie
numbers) around the trained Keras model, with two signatures:

    serving_default(user int64 [batch], item int64 [batch])
        -> score float32 [batch]   sigmoid of the logit: how likely the user rates the item
           logit float32 [batch]
           known bool [batch]      False where the user or the item is not in the training
                                   data: score and logit are then NaN, never another row's
    recommend(user int64 [batch], k int32 [])
        -> items int64 [batch, min(k, num_items)]   raw item ids, best first, never an item the
                                                    user rated in training (where the set
                                                    publishes them); -1 past the last
           scores float32 [batch, min(k, num_items)] NaN where items is -1
           known bool [batch]                        False: an unknown user (all -1 / NaN)

Raw ids are mapped to dense ones inside the model by two tf.lookup.StaticHashTable
(default -1 = out of vocabulary); the training items per user are kept as CSR (indptr,
indices) variables. All of it comes from dataset/ids/ (protocol.messages.IdMaps), which
the generator publishes (`read_ids`). The sets too large for one pod (ml-20mx16x32,
synthetic-20mx16x32) publish their users' raw ids alone: their items are already dense and
their served model excludes nothing (1.2 billion training items do not fit a SavedModel).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from protocol import CorruptData, DatasetMeta, PartInfo, RunDir, parts, storage
from protocol.messages import IdMaps

DEFAULT_K = 10


@dataclass(frozen=True)
class ServingIds:
    """Dense index -> raw id for users and items, and each user's training items (CSR, dense ids)."""

    user_raw: np.ndarray  # int64 [num_users]
    item_raw: np.ndarray  # int64 [num_items]
    indptr: np.ndarray  # int64 [num_users + 1]
    rated: np.ndarray  # int32 [num_train]: user u rated rated[indptr[u]:indptr[u + 1]]

    @classmethod
    def identity(cls, num_users: int, num_items: int) -> ServingIds:
        """Raw id = dense id and nothing rated: for run directories without dataset/ids/."""
        return cls(np.arange(num_users, dtype=np.int64), np.arange(num_items, dtype=np.int64),
                   np.zeros(num_users + 1, np.int64), np.zeros(0, np.int32))


def read_ids(run: RunDir, run_id: str, meta: DatasetMeta) -> ServingIds | None:
    """dataset/ids/ as published by the generator (sizes, checksums and shapes verified);
    None when the generator published none (an older generator, hand-made test runs)."""
    if not storage.exists(run.ids):
        return None
    listing = storage.read_message(run.ids, IdMaps, run_id)
    if (listing.num_users, listing.num_items, listing.num_train) != (meta.num_users, meta.num_items, meta.num_train):
        raise CorruptData(f"{run.ids}: lists {listing.num_users} users, {listing.num_items} items and "
                          f"{listing.num_train} training positives; {run.meta} says {meta.num_users}, "
                          f"{meta.num_items} and {meta.num_train}")
    columns = {name: _read_id_part(run, info, wanted) for name, info, wanted in (
        ("users", listing.users, ("raw_id", "train_count") if listing.train else ("raw_id",)),
        ("items", listing.items, ("raw_id",)), ("train", listing.train, ("train_item",))) if info is not None}
    user_raw = np.asarray(columns["users"]["raw_id"], np.int64)
    # No items part: a large set's item ids are already dense (IdMaps).
    item_raw = np.asarray(columns["items"]["raw_id"], np.int64) if "items" in columns else \
        np.arange(meta.num_items, dtype=np.int64)
    for what, raw in (("user", user_raw), ("item", item_raw)):
        if len(np.unique(raw)) != len(raw):
            raise CorruptData(f"{run.ids_dir}: the {what} raw ids repeat")
    if "train" not in columns:  # a large set: nothing excluded when serving (IdMaps says why)
        return dataclasses.replace(ServingIds.identity(meta.num_users, meta.num_items), user_raw=user_raw,
                                   item_raw=item_raw)
    counts = np.asarray(columns["users"]["train_count"], np.int64)
    rated = np.asarray(columns["train"]["train_item"]).astype(np.int32)
    if counts.min(initial=0) < 0 or counts.sum() != len(rated) or (len(rated) and rated.max() >= meta.num_items):
        raise CorruptData(f"{run.ids_dir}: training items per user do not fit {meta.num_items} items")
    return ServingIds(user_raw, item_raw, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), rated)


def _read_id_part(run: RunDir, info: PartInfo, wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One part of dataset/ids/ (size and CRC32C verified) with these columns."""
    url = storage.join(run.ids_dir, info.name)
    got = parts.read(url, info)
    missing = [c for c in wanted if c not in got]
    if missing:
        raise CorruptData(f"{url}: lacks column(s) {', '.join(missing)}")
    return got


def serving_module(model, ids: ServingIds):
    """A tf.Module around the Keras model with the two raw-id signatures (see the module docstring)."""
    import tensorflow as tf

    num_items = len(ids.item_raw)

    class Serving(tf.Module):
        def __init__(self):
            super().__init__(name="ncf")
            self.model = model

            def table(raw):
                init = tf.lookup.KeyValueTensorInitializer(tf.constant(raw, tf.int64),
                                                           tf.range(len(raw), dtype=tf.int64))
                return tf.lookup.StaticHashTable(init, default_value=-1)

            self.user_index, self.item_index = table(ids.user_raw), table(ids.item_raw)
            self.item_raw = tf.Variable(ids.item_raw, trainable=False, name="item_raw")
            self.rated_indptr = tf.Variable(ids.indptr, trainable=False, name="rated_indptr")
            self.rated_items = tf.Variable(ids.rated, trainable=False, name="rated_items")

        def _logit(self, user, item):
            return tf.reshape(tf.cast(self.model((user, item), training=False), tf.float32), [-1])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="user"),
                                      tf.TensorSpec([None], tf.int64, name="item")])
        def score(self, user, item):
            u, i = self.user_index.lookup(user), self.item_index.lookup(item)
            known = (u >= 0) & (i >= 0)
            logit = self._logit(tf.cast(tf.where(known, u, 0), tf.int32), tf.cast(tf.where(known, i, 0), tf.int32))
            logit = tf.where(known, logit, tf.constant(np.nan, tf.float32))
            return {"score": tf.sigmoid(logit), "logit": logit, "known": known}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="user"),
                                      tf.TensorSpec([], tf.int32, name="k")])
        def recommend(self, user, k=DEFAULT_K):
            tf.debugging.assert_greater_equal(k, 1, message="k must be at least 1")
            dense = self.user_index.lookup(user)
            known = dense >= 0
            safe = tf.where(known, dense, 0)
            batch = tf.shape(user)[0]
            users = tf.repeat(tf.cast(safe, tf.int32), num_items)
            items = tf.tile(tf.range(num_items, dtype=tf.int32), [batch])
            logits = tf.reshape(self._logit(users, items), [batch, num_items])
            rated = tf.RaggedTensor.from_row_splits(self.rated_items.read_value(), self.rated_indptr.read_value(),
                                                    validate=False)
            mine = tf.gather(rated, safe)  # [batch, (rated)]
            where = tf.stack([mine.value_rowids(), tf.cast(mine.flat_values, tf.int64)], axis=1)
            logits = tf.tensor_scatter_nd_update(logits, where, tf.fill(tf.shape(where)[:1], -np.inf))
            top_logits, top = tf.math.top_k(logits, tf.minimum(k, num_items))
            valid = (top_logits > -np.inf) & known[:, None]
            return {"items": tf.where(valid, tf.gather(self.item_raw, top), tf.constant(-1, tf.int64)),
                    "scores": tf.where(valid, tf.sigmoid(top_logits), tf.constant(np.nan, tf.float32)),
                    "known": known}

    return Serving()


def save_serving(model, ids: ServingIds, path: str) -> None:
    """Writes the raw-id SavedModel to a local folder."""
    import tensorflow as tf

    module = serving_module(model, ids)
    tf.saved_model.save(module, path, signatures={"serving_default": module.score.get_concrete_function(),
                                                  "recommend": module.recommend.get_concrete_function()})
