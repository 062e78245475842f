"""TFLite models through ai-edge-litert (tf.lite.Interpreter is deprecated).

PAD's published networks take (1, 454, 454, 3) float32; a model whose batch
dimension is dynamic gets the whole batch at once, otherwise items go one by one.
"""
from __future__ import annotations

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from evalstack.config import ModelError, ModelSpec
from evalstack.models.adapters.base import ModelAdapter


class TFLiteAdapter(ModelAdapter):
    framework = "tflite"
    runtime_distributions = ("ai-edge-litert", "numpy")

    def __init__(self, spec: ModelSpec, num_threads: int = 2):
        super().__init__(spec)
        try:
            self.interpreter = Interpreter(model_content=self.take_weights().data, num_threads=num_threads)
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"model {spec.name}: {spec.file} is not a loadable TFLite model: {error}") from None
        detail = self.interpreter.get_input_details()[0]
        self._input_index = detail["index"]
        self._output_index = self.interpreter.get_output_details()[0]["index"]
        self._dynamic_batch = int(detail["shape_signature"][0]) == -1
        self._shape = tuple(int(v) for v in detail["shape"][1:])
        self._allocated_batch = 0
        if detail["dtype"] != np.float32:
            raise ModelError(f"model {spec.name}: input dtype {detail['dtype']}, evalstack feeds float32")

    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._allocated_batch != len(batch):
            self.interpreter.resize_tensor_input(self._input_index, [len(batch), *self._shape])
            self.interpreter.allocate_tensors()
            self._allocated_batch = len(batch)
        self.interpreter.set_tensor(self._input_index, batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output_index).copy()

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self._dynamic_batch:
            return self._run(batch)
        return np.concatenate([self._run(batch[i : i + 1]) for i in range(len(batch))])
