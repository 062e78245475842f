"""The ModelAdapter interface every framework implements.

An adapter takes a batch of model-ready arrays (N, H, W, C) float32 in 0–255
(or (N, F) feature vectors) and returns outputs (N, K): logits over the labels
for `task: classify`; for `task: concentration`, one output per name in
`output_names()` (see evalstack.evaluation.concentration). Its signature is the sha256 of
the weight file plus the input/output contract, so a changed file or label list
invalidates cached predictions while a renamed file does not.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from evalstack.config import TASKS, ModelError, ModelSpec, signature_options
from evalstack.core.fingerprint import check_functions_in_closure, defining_module, runtime_part
from evalstack.core.keys import Key
from evalstack.models.trust import refuse_pickle_for_data_adapter
from evalstack.models.weights import WeightFile, check_pin, read_weights


class ModelAdapter(ABC):
    framework: ClassVar[str]
    loaded: ClassVar[bool] = True  # its file is loaded (a models.signatures.DeferredAdapter may not be yet)
    unpickles: ClassVar[bool] = False  # its framework's loader unpickles: it calls models.trust.require_trusted

    def __init__(self, spec: ModelSpec):
        if not spec.file.exists():
            raise ModelError(
                f"model {spec.name}: file {spec.file} does not exist "
                "(train it with `dvc repro`, `dvc pull` it, or add it with `dvc add`/`dvc import-url`)"
            )
        if spec.task not in TASKS:
            raise ModelError(f"model {spec.name}: task {spec.task!r} unknown; choose one of {', '.join(TASKS)}")
        self.spec = spec
        weights = read_weights(spec.file)
        if not self.unpickles:
            refuse_pickle_for_data_adapter(spec.name, weights, spec.adapter)
        check_pin(spec.name, weights, spec.sha256)
        self.weights_sha256 = weights.sha256
        self._weights: WeightFile | None = weights
        self.forward_passes = 0  # items pushed through the network, for reuse accounting
        self.forward_seconds = 0.0  # wall time inside the framework, for latency (never part of a key)

    def take_weights(self) -> WeightFile:
        """The bytes hashed into the signature, for the framework to load (models/weights.py says why it must
        not open the path again). Handed out once, so the adapter does not hold a second copy of the weights."""
        weights, self._weights = self._weights, None
        if weights is None:
            raise RuntimeError(f"model {self.spec.name}: its weights were already handed to the framework")
        return weights

    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Per-item input shape the model declares, in the model's own layout."""

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch already in the model's layout."""

    def _fixed_input_shape(self, declared: tuple | None, hint: str = "") -> tuple[int, ...]:
        """`input_shape` from params.yaml if given, else what the file declares (must be fully known)."""
        shape = self.spec.options.get("input_shape") or declared
        if not shape or any(not isinstance(dim, int) for dim in shape):
            raise ModelError(
                f"model {self.spec.name}: input shape {declared} is not fixed; {hint or 'set'} input_shape "
                "in params.yaml, e.g. [64, 64, 3]"
            )
        return tuple(int(v) for v in shape)

    def output_names(self) -> tuple[str, ...]:
        """What each output column means; the labels unless an adapter says otherwise."""
        return self.spec.labels

    # The distributions whose versions shape this adapter's outputs (runtime_part): its framework, numpy.
    runtime_distributions: tuple[str, ...] = ("numpy",)

    # Options that change no output of the model (the comparison reads parity_of). Every other option is in the
    # signature: an adapter reads its own options (yours may read any), and outputs computed under one value must
    # not be served for another.
    options_outside_signature: tuple[str, ...] = ("parity_of",)

    def contract(self) -> dict[str, Any]:
        return {
            # Two adapter classes in one module have the same code part in a key (its import closure): the class
            # tells their outputs apart (a hunt found one class's predictions served for the other's).
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "framework": self.framework,
            "runtime": runtime_part(*self.runtime_distributions),
            "input_shape": list(self.input_shape()),
            "input_dtype": "float32",
            "layout": self.spec.layout,
            "labels": list(self.spec.labels),
            "task": self.spec.task,
            "options": signature_options(self.spec, self.options_outside_signature),
            "options_outside": list(self.options_outside_signature),  # so a reader names them without the class
        }

    def signature(self) -> Key:
        check_functions_in_closure(self, self.code_module)  # a function set on this object in a notebook
        return Key("model", {"weights_sha256": self.weights_sha256, **self.contract()})

    @property
    def code_module(self) -> str:
        """The module whose import closure is this adapter's code in cache keys."""
        return defining_module(type(self))

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Outputs (N, K) for model-ready arrays (N, H, W, C) in 0–255 or feature vectors (N, F)."""
        batch = np.asarray(batch)
        if batch.dtype.kind not in "biuf":
            raise ModelError(f"model {self.spec.name}: input dtype {batch.dtype} is not numeric; models take float32")
        batch = batch.astype(np.float32, copy=False)
        if self.spec.layout == "NCHW" and batch.ndim == 4:
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        expected = tuple(self.input_shape())
        if tuple(batch.shape[1:]) != expected:
            raise ModelError(
                f"model {self.spec.name}: input shape {tuple(batch.shape[1:])} does not match the model's "
                f"{expected}; check that its pipeline ({self.spec.pipeline}) produces that size"
            )
        started = time.perf_counter()
        try:
            logits = np.asarray(self._forward(batch), dtype=np.float32)
        except ModelError:
            raise
        except Exception as error:  # a framework's own error (a TFLite custom op, an ONNX kernel) names no model
            raise ModelError(f"model {self.spec.name}: {self.spec.file} failed to run on a batch of {len(batch)} "
                             f"({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''})"
                             "; the file may need operators this runtime lacks (a custom op), or another input "
                             "shape or type") from error
        self.forward_seconds += time.perf_counter() - started
        self.forward_passes += len(batch)
        self._check_outputs(logits, len(batch))
        return logits

    def _check_vector_outputs(self, logits: np.ndarray, n_items: int) -> None:
        if logits.ndim != 2 or logits.shape[0] != n_items:
            raise ModelError(f"model {self.spec.name}: output shape {logits.shape}, expected ({n_items}, K)")
        names = self.output_names()
        if logits.shape[1] != len(names):
            what = "classes" if self.spec.task == "classify" else "values"
            raise ModelError(
                f"model {self.spec.name}: outputs {logits.shape[1]} {what} but {len(names)} "
                "labels are declared; fix the labels list in params.yaml"
            )

    def _check_outputs(self, logits: np.ndarray, n_items: int) -> None:
        if self.spec.task != "detect":  # a detector's raw head output is decoded by its adapter
            self._check_vector_outputs(logits, n_items)
        if not np.all(np.isfinite(logits)):
            bad = int(np.sum(~np.all(np.isfinite(logits.reshape(len(logits), -1)), axis=1)))
            raise ModelError(f"model {self.spec.name}: {bad} of {n_items} outputs contain NaN or inf")
