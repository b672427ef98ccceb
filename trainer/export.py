"""The exported model (model/ in the run directory): what people and TensorFlow Serving run.

    model/model.keras      the Keras model of the exported epoch: dense ids in, the logit out
    model/saved_model/     a SavedModel on the dataset's raw ids (MovieLens' own user and movie
                           numbers), with two signatures:

    serving_default(user int64 [batch], item int64 [batch])
        -> score float32 [batch]   sigmoid of the logit: how likely the user rates the item
           logit float32 [batch]
           known bool [batch]      False where the user or the item is not in the training
                                   data: score and logit are then NaN, never another row's
    recommend(user int64 [batch], k int32 [])
        -> items int64 [batch, min(k, num_items)]   raw item ids, best first, never an item the
                                                    user rated in training; -1 past the last
           scores float32 [batch, min(k, num_items)] NaN where items is -1
           known bool [batch]                        False: an unknown user (all -1 / NaN)

Raw ids are mapped to dense ones inside the model by two tf.lookup.StaticHashTable
(default -1 = out of vocabulary); the training items per user are kept as CSR (indptr,
indices) variables. All of it comes from dataset/ids/ (protocol.messages.IdMaps), which
the generator publishes; the SavedModel is written to a local temporary folder and
uploaded through protocol.storage (TensorFlow never opens gs:// itself).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from protocol import CorruptData, DatasetMeta, EpochMetrics, InvalidInput, RunDir, parts, storage
from protocol.messages import IdMaps

log = logging.getLogger("ncf.trainer")
DEFAULT_K = 10


@dataclass
class Exported:
    """Which weights the run exports: the best epoch's (highest HR@10, the first on a tie), kept
    as a host copy whenever HR@10 improves so the bucket is never read back (mode "best"), or
    the last epoch's (mode "last"). See trainer/train.py's docstring for restarts."""

    mode: str
    best: EpochMetrics | None = None
    weights: list[np.ndarray] | None = None
    gone: EpochMetrics | None = None  # after a restart: a better epoch whose checkpoint is gone

    def note(self, record: EpochMetrics, model) -> None:
        if self.mode == "best" and (self.best is None or record.hr_at_10 > self.best.hr_at_10):
            self.best, self.weights = record, [np.array(w, copy=True) for w in model.get_weights()]

    def restore(self, run: RunDir, history: list[EpochMetrics], saved, model) -> None:
        """After a restart: the best epoch so far (from the checkpoint's history) and its weights,
        from the model just restored or from a checkpoint still kept; else none is held."""
        if self.mode != "best" or saved is None or not history:
            return
        best = max(history, key=lambda m: m.hr_at_10)
        if best.epoch == history[-1].epoch:
            weights = [np.array(w, copy=True) for w in model.get_weights()]  # the checkpoint just restored
        else:
            weights = checkpoint_weights(run, best.epoch, saved.pointer)
        if weights is None:
            self.gone = best
            log.warning("the best epoch so far (%d, HR@10 %.4f) has no checkpoint any more: the exported model "
                        "will be the best of the epochs trained after this restart", best.epoch, best.hr_at_10)
            return
        self.best, self.weights = best, weights
        log.info("best epoch so far: %d (HR@10 %.4f), its weights taken from its checkpoint", best.epoch,
                 best.hr_at_10)

    def choose(self, model, history: list[EpochMetrics]) -> tuple[str | None, EpochMetrics | None, str | None]:
        """Sets the model's weights to the ones to export; returns (best|last, their epoch's
        metrics, why the choice is not what the mode asked for, if it is not)."""
        chosen, record, reason = "last", history[-1] if history else None, None
        if self.mode == "best" and self.best is not None:
            chosen, record = "best", self.best
            model.set_weights(self.weights)
            if self.gone is not None and self.gone.hr_at_10 > record.hr_at_10:
                reason = (f"epoch {self.gone.epoch} scored better, but its checkpoint was gone after a "
                          f"restart: exported the best of the epochs trained after it")
        elif self.mode == "best" and record is not None:
            gone = self.gone.epoch if self.gone is not None else "?"
            reason = (f"the best epoch ({gone})'s checkpoint was gone after a restart and no epoch was "
                      f"trained since: exported the last")
        if reason:
            log.warning("exporting epoch %s: %s", record.epoch if record else None, reason)
        return (chosen if record else None), record, reason


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
    columns = {}
    for name, info, wanted in (("users", listing.users, ("raw_id", "train_count")),
                               ("items", listing.items, ("raw_id",)), ("train", listing.train, ("train_item",))):
        url = storage.join(run.ids_dir, info.name)
        got = parts.read(url, info)
        missing = [c for c in wanted if c not in got]
        if missing:
            raise CorruptData(f"{url}: lacks column(s) {', '.join(missing)}")
        columns[name] = got
    user_raw, item_raw = (np.asarray(columns[n]["raw_id"], np.int64) for n in ("users", "items"))
    counts = np.asarray(columns["users"]["train_count"], np.int64)
    rated = np.asarray(columns["train"]["train_item"]).astype(np.int32)
    for what, raw in (("user", user_raw), ("item", item_raw)):
        if len(np.unique(raw)) != len(raw):
            raise CorruptData(f"{run.ids_dir}: the {what} raw ids repeat")
    if counts.min(initial=0) < 0 or counts.sum() != len(rated) or (len(rated) and rated.max() >= meta.num_items):
        raise CorruptData(f"{run.ids_dir}: training items per user do not fit {meta.num_items} items")
    return ServingIds(user_raw, item_raw, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), rated)


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


def export(run: RunDir, model, ids: ServingIds | None) -> None:
    """model/model.keras and model/saved_model/ (see the module docstring), uploaded through
    protocol.storage. Without ids the SavedModel takes dense ids and excludes nothing."""
    if ids is None:
        log.warning("%s is missing (a generator older than the id maps?): the served model takes dense ids "
                    "0..n-1 and recommends without excluding rated items", run.ids)
        ids = ServingIds.identity(int(model.get_layer("mf_user").input_dim), int(model.get_layer("mf_item").input_dim))
    with tempfile.TemporaryDirectory(prefix="ncf-export-") as tmp:
        model.save(os.path.join(tmp, "model.keras"))
        try:
            save_serving(model, ids, os.path.join(tmp, "saved_model"))
        except Exception as error:  # e.g. a strategy that cannot export; the .keras file still serves
            log.warning("SavedModel export failed (%s: %s); model.keras only", type(error).__name__, error)
        storage.put_tree(tmp, run.model)
    log.info("exported the model to %s", run.model)


def checkpoint_weights(run: RunDir, epoch: int, latest_pointer: dict) -> list[np.ndarray] | None:
    """The model weights of epoch `epoch`'s checkpoint (checkpoints/ckpt-<epoch + 1>) if it is still
    kept, else None. For a checkpoint older than the latest, only latest.json's array layout
    and piece sizes are known (its own pointer was overwritten): the pieces are checked for
    size, not CRC32C. An .npz (older format) is a zip, whose members carry a CRC32."""
    name = f"ckpt-{epoch + 1:06d}"
    folder, npz = storage.join(run.checkpoints, name), storage.join(run.checkpoints, name + ".npz")
    try:
        if storage.exists(npz):
            with np.load(io.BytesIO(storage.read_bytes(npz))) as arrays:
                return [arrays[k] for k in sorted(arrays.files) if k.startswith("w")]
        pieces, table = latest_pointer.get("pieces"), latest_pointer.get("arrays")
        if not pieces or not table or not storage.listdir(folder):
            return None
        chunks = []
        for info in pieces:
            data = storage.read_bytes(storage.join(folder, info["name"]))
            if len(data) != info["size"]:
                raise CorruptData(f"{folder}/{info['name']}: {len(data)} bytes, expected {info['size']}")
            chunks.append(data)
        buffer = np.frombuffer(b"".join(chunks), np.uint8)
        arrays = {e["key"]: buffer[e["offset"]:e["offset"] + e["nbytes"]].view(e["dtype"]).reshape(e["shape"])
                  for e in table}
        return [arrays[k].copy() for k in sorted(arrays) if k.startswith("w")]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, CorruptData) as error:
        log.warning("ignoring the checkpoint %s: %s", folder, error)
        return None


def check_model_dir(url: str) -> str:
    """The SavedModel folder in url (a run's model/ or the saved_model/ folder itself); exit 2 if none."""
    for candidate in (storage.join(url, "saved_model"), url):
        if storage.exists(storage.join(candidate, "saved_model.pb")):
            return candidate
    raise InvalidInput(f"{url}: no SavedModel there (expected saved_model/saved_model.pb or saved_model.pb)")
