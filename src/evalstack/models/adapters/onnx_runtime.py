"""ONNX models through onnxruntime on the CPU execution provider.

A model whose batch dimension is symbolic (e.g. exported with a dynamic batch)
gets the whole batch in one run; a fixed batch size is fed chunk by chunk.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from evalstack.config import ModelError, ModelSpec
from evalstack.models.adapters.base import ModelAdapter
from evalstack.models.weights import WeightFile


def onnx_session(name: str, weights: WeightFile, options: Any, providers: list[Any]) -> Any:
    """An onnxruntime session on the bytes the signature hashed. A model that keeps tensors in external data
    files is refused: those files are outside the sha256 its results are keyed by, and onnxruntime would look
    for them next to the working directory when it loads from bytes."""
    import onnxruntime

    external = _external_tensors(weights.data)
    if external:
        raise ModelError(f"model {name}: {weights.path} keeps tensors {external[:3]} in external data files, which "
                         "its sha256 does not cover; save it as one file: `torch.onnx.export(..., "
                         "external_data=False)` (torch's exporter writes `<file>.data` by default), or "
                         "`onnx.save(onnx.load(path), path, save_as_external_data=False)`; up to 2 GB")
    try:
        return onnxruntime.InferenceSession(weights.data, sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types
        raise ModelError(f"model {name}: {weights.path} is not a loadable ONNX model: {error}") from None


def _external_tensors(data: bytes) -> list[str]:
    """Names of the tensors stored outside the file, wherever they sit: initializers, sparse initializers,
    attribute tensors, subgraphs (every TensorProto in the model; parsing 160 MB takes ~0.1 s). None for bytes
    that are no ModelProto, which onnxruntime then refuses in its own words."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # protobuf's DecodeError, or a message onnx cannot read
        return []
    found: list[str] = []
    pending: list[Any] = [model]
    while pending:
        message = pending.pop()
        if isinstance(message, onnx.TensorProto):
            if message.data_location == onnx.TensorProto.EXTERNAL:
                found.append(message.name)
            continue
        for field, value in message.ListFields():
            if field.type == field.TYPE_MESSAGE:
                pending.extend(value if field.is_repeated else [value])
    return sorted(found)


class OnnxAdapter(ModelAdapter):
    framework = "onnx"
    runtime_distributions = ("onnxruntime", "numpy")

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        self.session = onnx_session(spec.name, self.take_weights(), options, ["CPUExecutionProvider"])
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
