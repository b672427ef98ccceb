"""The exported model (model/ in the run directory): what people and TensorFlow Serving run.

    model/model.keras      the Keras model of the exported epoch: dense ids in, the logit out
    model/saved_model/     the serving module (trainer/serving.py): raw ids in, scores and
                           top-k recommendations out

Both are written to a local temporary folder and uploaded through protocol.storage
(TensorFlow never opens gs:// itself). Which epoch's weights: trainer/best.py.

The serving module is TensorFlow (lookup tables, tf.function signatures): a model trained on
Keras' JAX backend (several hosts, trainer/multihost.py) is saved as model.keras and turned
into the SavedModel by a child process on the TensorFlow backend (`python -m trainer.export`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tempfile

import numpy as np

from protocol import InvalidInput, RunDir, storage
from protocol.errors import describe_error

from .serving import ServingIds, save_serving

log = logging.getLogger("ncf.trainer")


def export(run: RunDir, model, ids: ServingIds | None) -> None:
    """model/model.keras and model/saved_model/ (see the module docstring), uploaded through
    protocol.storage. Without ids the SavedModel takes dense ids and excludes nothing."""
    if ids is None:
        log.warning("%s is missing (a generator older than the id maps?): the served model takes dense ids "
                    "0..n-1 and recommends without excluding rated items", run.ids)
        ids = ServingIds.identity(int(model.get_layer("mf_user").input_dim), int(model.get_layer("mf_item").input_dim))
    import keras

    with tempfile.TemporaryDirectory(prefix="ncf-export-") as tmp:
        model.save(os.path.join(tmp, "model.keras"))
        try:
            if keras.backend.backend() == "tensorflow":
                save_serving(model, ids, os.path.join(tmp, "saved_model"))
            else:
                save_serving_in_child(tmp, ids)
        except Exception as error:  # e.g. a strategy that cannot export; the .keras file still serves
            log.warning("SavedModel export failed (%s); model.keras only", describe_error(error))
        storage.put_tree(tmp, run.model)
    log.info("exported the model to %s", run.model)


IDS_FILE = "serving-ids.npz"  # the child's input, next to model.keras; not uploaded
CHILD_TIMEOUT_S = 1800  # ml-20mx16x32's 3M users' lookup tables take minutes


def save_serving_in_child(folder: str, ids: ServingIds) -> None:
    """folder/saved_model/ from folder/model.keras, by `python -m trainer.export folder` on Keras'
    TensorFlow backend; RuntimeError with the child's last output if it fails."""
    ids_path = os.path.join(folder, IDS_FILE)
    np.savez(ids_path, **dataclasses.asdict(ids))
    try:
        child = subprocess.run([sys.executable, "-m", "trainer.export", folder], capture_output=True, text=True,
                               env={**os.environ, "KERAS_BACKEND": "tensorflow", "JAX_PLATFORMS": "cpu"},
                               timeout=CHILD_TIMEOUT_S)
    finally:
        os.remove(ids_path)
    if child.returncode:
        raise RuntimeError(f"python -m trainer.export exited {child.returncode}: {child.stderr.strip()[-1000:]}")


def main(folder: str) -> None:
    """The child of save_serving_in_child."""
    import keras

    from .model import LinearWarmup

    model = keras.models.load_model(os.path.join(folder, "model.keras"), compile=False,
                                    custom_objects={"LinearWarmup": LinearWarmup})
    with np.load(os.path.join(folder, IDS_FILE)) as saved:
        ids = ServingIds(**{name: saved[name] for name in saved.files})
    save_serving(model, ids, os.path.join(folder, "saved_model"))


def check_model_dir(url: str) -> str:
    """The SavedModel folder in url (a run's model/ or the saved_model/ folder itself); exit 2 if none."""
    for candidate in (storage.join(url, "saved_model"), url):
        if storage.exists(storage.join(candidate, "saved_model.pb")):
            return candidate
    raise InvalidInput(f"{url}: no SavedModel there (expected saved_model/saved_model.pb or saved_model.pb)")


if __name__ == "__main__":
    main(sys.argv[1])
