"""ONNX models through onnxruntime on the CPU execution provider.

A model whose batch dimension is symbolic (e.g. exported with a dynamic batch)
gets the whole batch in one run; a fixed batch size is fed chunk by chunk.
"""
from __future__ import annotations

import numpy as np

from evalstack.config import ModelError, ModelSpec
from evalstack.models.adapters.base import ModelAdapter


class OnnxAdapter(ModelAdapter):
    framework = "onnx"
    runtime_distributions = ("onnxruntime", "numpy")

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        try:
            self.session = onnxruntime.InferenceSession(
                str(spec.file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelError(f"model {spec.name}: {spec.file} is not a loadable ONNX model: {error}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"model {spec.name}: has {len(inputs)} inputs, evalstack feeds one")
        first = inputs[0]
        if first.type != "tensor(float)":
            raise ModelError(f"model {spec.name}: input type {first.type}, evalstack feeds float32 (tensor(float))")
        self._input_name = first.name
        batch_dim, *item_dims = first.shape
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self._shape = self._fixed_input_shape(tuple(item_dims))

    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input_name: batch})[0]

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self._fixed_batch is None:
            return self._run(batch)
        size = self._fixed_batch
        parts = []
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            parts.append(self._run(padded)[: len(chunk)])
        return np.concatenate(parts)
