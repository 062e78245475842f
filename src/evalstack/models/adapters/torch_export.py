"""PyTorch models saved with torch.export (.pt2) or TorchScript (.pt).

torch.export files are byte-deterministic; TorchScript files differ on every
save, which is harmless here because the signature hashes the file a user gives.
"""
from __future__ import annotations

import io

import numpy as np
import torch

from evalstack.config import ModelError, ModelSpec
from evalstack.models.adapters.base import ModelAdapter
from evalstack.models.trust import require_trusted
from evalstack.models.weights import WeightFile


def load_torch_module(spec: ModelSpec, weights: WeightFile) -> tuple[torch.nn.Module, tuple[int, ...] | None]:
    """The callable module and, for torch.export files, the per-item input shape it declares, from the bytes
    the signature hashed. Both formats can run code on load, so the model entry must pin the file or trust it."""
    require_trusted(spec.name, weights, spec.sha256, spec.trust)
    try:
        if spec.file.suffix == ".pt2":
            program = torch.export.load(io.BytesIO(weights.data))
            return program.module(), _exported_input_shape(program)
        return torch.jit.load(io.BytesIO(weights.data), map_location="cpu").eval(), None
    except Exception as error:  # torch raises many types for a bad archive
        raise ModelError(f"model {spec.name}: cannot load {spec.file} with torch: {error}") from None


def _exported_input_shape(program: "torch.export.ExportedProgram") -> tuple[int, ...] | None:
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            shape = node.meta["val"].shape[1:]
            if all(isinstance(dim, int) for dim in shape):
                return tuple(int(dim) for dim in shape)
    return None


class TorchAdapter(ModelAdapter):
    framework = "torch"
    runtime_distributions = ("torch", "numpy")
    unpickles = True

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.module, declared = load_torch_module(spec, self.take_weights())
        self._shape = self._fixed_input_shape(declared, "TorchScript models need")

    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch)).numpy()
