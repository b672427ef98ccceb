"""The exported model (model/ in the run directory): what people and TensorFlow Serving run.

    model/model.keras      the Keras model of the exported epoch: dense ids in, the logit out
    model/saved_model/     the serving module (trainer/serving.py): raw ids in, scores and
                           top-k recommendations out

Both are written to a local temporary folder and uploaded through protocol.storage
(TensorFlow never opens gs:// itself). Which epoch's weights: trainer/best.py.
"""

from __future__ import annotations

import logging
import os
import tempfile

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
    with tempfile.TemporaryDirectory(prefix="ncf-export-") as tmp:
        model.save(os.path.join(tmp, "model.keras"))
        try:
            save_serving(model, ids, os.path.join(tmp, "saved_model"))
        except Exception as error:  # e.g. a strategy that cannot export; the .keras file still serves
            log.warning("SavedModel export failed (%s); model.keras only", describe_error(error))
        storage.put_tree(tmp, run.model)
    log.info("exported the model to %s", run.model)


def check_model_dir(url: str) -> str:
    """The SavedModel folder in url (a run's model/ or the saved_model/ folder itself); exit 2 if none."""
    for candidate in (storage.join(url, "saved_model"), url):
        if storage.exists(storage.join(candidate, "saved_model.pb")):
            return candidate
    raise InvalidInput(f"{url}: no SavedModel there (expected saved_model/saved_model.pb or saved_model.pb)")
