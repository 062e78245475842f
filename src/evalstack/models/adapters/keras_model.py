"""Keras 3 models saved as `.keras` archives (keras.saving.load_model, safe_mode on).

safe_mode refuses archives that carry Python lambdas, so opening a model a
colleague sent cannot run arbitrary code. `canonical_keras_archive` rewrites
an archive so that saving the same weights twice gives the same bytes (Keras
stamps the save time and Python object ids into it), which keeps the model
signature, and every cache keyed on it, stable across `dvc repro -f`.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any

import numpy as np

from evalstack.config import ModelError, ModelSpec
from evalstack.models.adapters.base import ModelAdapter
from evalstack.models.weights import private_copy

_EPOCH = (1980, 1, 1, 0, 0, 0)


class KerasAdapter(ModelAdapter):
    framework = "keras"
    runtime_distributions = ("keras", "tensorflow-cpu", "numpy")

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras

        try:
            # load_model takes only a path, and picks its loader by the name's suffix
            with private_copy(self.take_weights(), spec.file.suffix or ".keras") as copy:
                try:
                    self.model = keras.saving.load_model(copy, compile=False, safe_mode=True)
                except Exception as error:  # keras raises ValueError, OSError, zip errors, …
                    message = str(error).replace(str(copy), str(spec.file))
                    raise ModelError(f"model {spec.name}: {spec.file} is not a loadable .keras model: "
                                     f"{message}") from None
        except OSError as error:  # the private copy could not be written
            raise ModelError(f"model {spec.name}: cannot copy {spec.file} to a private folder to load it: "
                             f"{error}") from None
        inputs = self.model.inputs
        if len(inputs) != 1:
            raise ModelError(f"model {spec.name}: has {len(inputs)} inputs, evalstack feeds one")
        if str(inputs[0].dtype) != "float32":
            raise ModelError(f"model {spec.name}: input dtype {inputs[0].dtype}, evalstack feeds float32")
        self._shape = self._fixed_input_shape(tuple(inputs[0].shape[1:]))

    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(batch, training=False))


def _renumber_shared_ids(node: Any, ids: dict[int, int]) -> Any:
    """Replace Python object ids (random per process) by their order of appearance."""
    if isinstance(node, dict):
        return {
            key: ids.setdefault(value, len(ids) + 1) if key == "shared_object_id" else _renumber_shared_ids(value, ids)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_renumber_shared_ids(value, ids) for value in node]
    return node


def canonical_keras_archive(data: bytes) -> bytes:
    """The same archive without save time, object ids or zip timestamps."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in sorted(source.infolist(), key=lambda item: item.filename):
            content = source.read(info.filename)
            if info.filename == "metadata.json":
                metadata = json.loads(content)
                metadata.pop("date_saved", None)
                content = json.dumps(metadata, sort_keys=True).encode()
            elif info.filename == "config.json":
                content = json.dumps(_renumber_shared_ids(json.loads(content), {})).encode()
            entry = zipfile.ZipInfo(info.filename, _EPOCH)
            entry.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(entry, content)
    return out.getvalue()
