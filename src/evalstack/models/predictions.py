"""The predictions layer: what infer writes per item, its key, and opening it checked.

Per item it stores what PAD's `nn_predict` reports — label (argmax), probability
(softmax of the winner) and energy (logsumexp of the logits) — plus the logits,
so later metrics never need another forward pass. Evaluation reads this module
only: it never imports a framework adapter.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from evalstack.config import ModelSpec, signature_options
from evalstack.core.fingerprint import current_digests
from evalstack.core.keys import Key, sha256_file
from evalstack.core.kinds import PREDICTIONS_KIND
from evalstack.core.layers import ITEM_KEY, Layer

PREDICTION_VALUES = ("label", "probability", "energy", "logits")  # hashed per item for `verify`


def predictions_key(model_signature: Key, pipeline_key: Key, code: Mapping[str, str] | None = None,
                    batch_size: int | None = None) -> Key:
    """(model signature, pipeline key, code of the stage that predicts, batch size); `code` is
    `models.inference.inference_code(...)` for layers the infer stage writes. The batch size is in the key
    because a framework's CPU kernels may round a logit's last bits differently at another batch size (torch:
    ~1e-7 at 1 and 7 against 32), so a layer computed at one size is not what a run at another would give."""
    parts: dict[str, Any] = {"model": dict(model_signature.parts), "pipeline": dict(pipeline_key.parts)}
    if code is not None:
        parts["code"] = dict(code)
    if batch_size is not None:
        parts["batch_size"] = int(batch_size)
    return Key("predictions", parts)


def prediction_columns(item_keys: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    # Imported here: scipy costs ~0.2 s, and evaluate, which imports this module, never predicts.
    from scipy.special import logsumexp, softmax

    probabilities = softmax(logits.astype(np.float64), axis=1)
    labels = np.argmax(logits, axis=1).astype(np.int64)
    return {
        ITEM_KEY: item_keys,
        "label": labels,
        "probability": probabilities[np.arange(len(labels)), labels].astype(np.float32),
        "energy": logsumexp(logits.astype(np.float64), axis=1).astype(np.float32),
        "logits": logits.astype(np.float32),
    }


def open_predictions(directory: Path, model_signature: Key, pipeline_key: Key, model_name: str) -> Layer:
    """The predictions layer, or CacheStaleError saying what changed and how to rebuild."""
    layer = Layer.open(directory, kind=PREDICTIONS_KIND)
    layer.expect_key(predictions_key(model_signature, pipeline_key, expected_code(layer.key), batch_size_of(layer.key)),
                     f"dvc repro infer@{model_name}")
    return layer


def batch_size_of(key: Key) -> int | None:
    """The batch size a predictions layer was computed at. A reader takes it from the layer: any batch size
    gives that model's predictions, and infer, which tracks `infer.batch_size`, reruns when it changes."""
    size = key.parts.get("batch_size")
    return int(size) if isinstance(size, int) else None


def expected_code(key: Key) -> dict[str, str] | None:
    """The code part a layer's key must have now: the modules it recorded, digested as they are today
    (an edit to any of them is an edit to the code that built the layer)."""
    recorded = key.parts.get("code")
    return current_digests(recorded) if isinstance(recorded, dict) else None


def expected_model_signature(layer: Any, spec: ModelSpec) -> Key:
    """The model signature a predictions layer (an evalstack.core.layers.Layer) must carry for `spec`,
    without loading the framework (TensorFlow alone takes seconds to import).

    Weights, labels, task and layout come from the file and params.yaml now; the
    rest of the contract (input shape, framework) is a function of the weights.
    """
    parts = copy.deepcopy(dict(layer.key.parts.get("model", {})))
    parts.update({"weights_sha256": sha256_file(spec.file), "labels": list(spec.labels), "task": spec.task,
                  "layout": spec.layout})
    if "options" in parts:  # as the adapter names them: all but those that change no output (the record says which)
        parts["options"] = signature_options(spec, tuple(parts.get("options_outside", ("parity_of",))))
    return Key("model", parts)
