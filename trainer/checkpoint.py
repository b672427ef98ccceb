"""Checkpoints in the bucket: weights + optimizer state + epochs done, written atomically.

checkpoints/ckpt-<epochs_done:06d>.npz holds the arrays; checkpoints/latest.json points
at the newest complete one (with its size and CRC32C) and carries what a restart needs
besides the arrays: the metrics of every epoch trained so far (so metrics.jsonl can be
rebuilt to exactly the checkpoint's epochs), whether training finished, and the model
settings the arrays were made with. The .npz is written first and the pointer
overwritten after it (one atomic object write), so a kill at any moment leaves the
previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol import CorruptData, EpochMetrics, ForeignRun, InvalidInput, RunDir, parts, storage
from protocol.messages import describe_differences, differences

log = logging.getLogger("ncf.trainer")
KEEP = 2  # checkpoints kept in the bucket


@dataclass
class State:
    run_id: str
    epochs_done: int
    finished: bool  # no more epochs to train (all done or the target HR was reached)
    started: float  # wall clock when the run first started training
    model_config: dict[str, Any]
    history: list[EpochMetrics] = field(default_factory=list)


@dataclass
class Saved:
    """A complete checkpoint in the bucket: its state, its arrays' URL, and the pointer's fields."""

    state: State
    npz_url: str
    pointer: dict[str, Any]


def pointer_url(run: RunDir) -> str:
    return storage.join(run.checkpoints, "latest.json")


def _optimizer(model):
    optimizer = model.optimizer
    return getattr(optimizer, "inner_optimizer", optimizer)  # the loss-scale wrapper's state is not kept


def save(run: RunDir, model, state: State) -> None:
    buffer = io.BytesIO()
    arrays = {f"w{i:04d}": w for i, w in enumerate(model.get_weights())}
    arrays |= {f"o{i:04d}": v.numpy() for i, v in enumerate(_optimizer(model).variables)}
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    name = f"ckpt-{state.epochs_done:06d}.npz"
    storage.write_bytes(storage.join(run.checkpoints, name), data)
    pointer = {
        "run_id": state.run_id, "epochs_done": state.epochs_done, "finished": state.finished,
        "started": state.started, "model_config": state.model_config, "file": name, "size": len(data),
        "crc32c": parts.checksum(data), "history": [m.to_dict() for m in state.history],
    }
    storage.overwrite(pointer_url(run), json.dumps(pointer, indent=1).encode())
    for old in storage.listdir(run.checkpoints):
        if old.startswith("ckpt-") and old.endswith(".npz") and old < f"ckpt-{state.epochs_done - KEEP + 1:06d}.npz":
            storage.delete(storage.join(run.checkpoints, old))


def load_state(run: RunDir, run_id: str, model_config: dict[str, Any]) -> Saved | None:
    """The latest complete checkpoint, or None if there is none."""
    url = pointer_url(run)
    if not storage.exists(url):
        return None
    try:
        pointer = json.loads(storage.read_bytes(url))
        history = [EpochMetrics.from_dict(m, url) for m in pointer["history"]]
        state = State(pointer["run_id"], pointer["epochs_done"], pointer["finished"], pointer["started"],
                      pointer["model_config"], history)
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptData(f"{url}: unreadable checkpoint pointer ({error})") from None
    if state.run_id != run_id:
        raise ForeignRun(url, state.run_id, run_id)
    changed = differences(model_config, state.model_config)
    if changed:
        raise InvalidInput(f"{url}: the checkpoint was trained with different model settings: "
                           + describe_differences(model_config, state.model_config, changed, "the flags",
                                                  "the checkpoint")
                           + "; rerun with the run's settings or use a new run directory")
    if [m.epoch for m in history] != list(range(state.epochs_done)):
        raise CorruptData(f"{url}: history lists epochs {[m.epoch for m in history]}, expected 0..{state.epochs_done - 1}")
    return Saved(state, storage.join(run.checkpoints, pointer["file"]), pointer)


def restore(model, saved: Saved) -> None:
    """Loads weights and optimizer state into a compiled model (built optimizer)."""
    npz_url, pointer = saved.npz_url, saved.pointer
    data = storage.read_bytes(npz_url)
    if len(data) != pointer["size"] or parts.checksum(data) != pointer["crc32c"]:
        raise CorruptData(f"{npz_url}: size or CRC32C differs from checkpoints/latest.json (corrupted checkpoint)")
    with np.load(io.BytesIO(data)) as arrays:
        weights = [arrays[k] for k in sorted(arrays.files) if k.startswith("w")]
        slots = [arrays[k] for k in sorted(arrays.files) if k.startswith("o")]
    optimizer = _optimizer(model)
    optimizer.build(model.trainable_variables)
    if len(slots) != len(optimizer.variables) or any(
            tuple(a.shape) != tuple(v.shape) for a, v in zip(slots, optimizer.variables)):
        raise InvalidInput(f"{npz_url}: optimizer state does not fit this model")
    model.set_weights(weights)
    for variable, value in zip(optimizer.variables, slots):
        variable.assign(value)


def export(run: RunDir, model) -> None:
    """model/model.keras (Keras) and model/saved_model/ (TF SavedModel, serving signature
    on int32 user and item ids, output the logit), uploaded through protocol.storage."""
    with tempfile.TemporaryDirectory(prefix="ncf-export-") as tmp:
        model.save(os.path.join(tmp, "model.keras"))
        try:
            model.export(os.path.join(tmp, "saved_model"), verbose=False)
        except Exception as error:  # e.g. a strategy that cannot export; the .keras file still serves
            log.warning("SavedModel export failed (%s: %s); model.keras only", type(error).__name__, error)
        for folder, _, files in os.walk(tmp):
            for name in files:
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, tmp).split(os.sep)
                with open(path, "rb") as f:
                    storage.write_bytes(storage.join(run.model, *relative), f.read())
    log.info("exported the model to %s", run.model)
