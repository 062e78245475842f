"""Model adapters, registered by the `adapter` name used in params.yaml.

To add a framework: write `adapters/<framework>.py` with a ModelAdapter subclass
and add one line to ADAPTERS. Its framework loads `self.take_weights().data`, the bytes the signature
hashed, never the path (models/weights.py says why); a framework whose loader unpickles sets
`unpickles = True` and calls models.trust.require_trusted on those bytes. (The detection profile loads its
detector through `evalstack.detection.adapter.load_detector`.) Imports are deferred so a TFLite-only user never
pays for importing torch or TensorFlow, and back.
"""
from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import Callable, NoReturn

from evalstack.config import ModelError, ModelSpec
from evalstack.models.adapters.base import ModelAdapter

# adapter name → (module, class)
ADAPTERS: dict[str, tuple[str, str]] = {
    "tflite": ("evalstack.models.adapters.tflite", "TFLiteAdapter"),
    "torch": ("evalstack.models.adapters.torch_export", "TorchAdapter"),
    "keras": ("evalstack.models.adapters.keras_model", "KerasAdapter"),
    "onnx": ("evalstack.models.adapters.onnx_runtime", "OnnxAdapter"),
    "pls": ("evalstack.models.adapters.pls", "PLSAdapter"),
}


def adapter_class(name: str) -> Callable[[ModelSpec], ModelAdapter]:
    module, cls = ADAPTERS[name]
    return getattr(import_module(module), cls)


def load_adapter(spec: ModelSpec) -> ModelAdapter:
    if spec.adapter not in ADAPTERS:
        raise ModelError(f"model {spec.name}: adapter {spec.adapter!r} unknown; registered: {sorted(ADAPTERS)}")
    return adapter_class(spec.adapter)(spec)


def end_process(code: int = 0) -> NoReturn:
    """End a stage that loaded a framework without the interpreter's teardown. Finalising torch or
    TensorFlow takes seconds (measured on a busy 2-core machine: torch 2.9 s, TensorFlow 5.6 s, numpy
    0.1 s), paid by every run of the stage; its outputs are written and fsynced by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


__all__ = ["ADAPTERS", "ModelAdapter", "ModelError", "ModelSpec", "adapter_class", "end_process", "load_adapter"]
