"""Model adapters, registered by the `adapter` name used in params.yaml.

To add a framework: write `adapters/<framework>.py` with a ModelAdapter subclass
and add one line to ADAPTERS. (The detection profile loads its
detector through `evalstack.detection.adapter.load_detector`.) Imports are deferred so a TFLite-only user never
pays for importing torch or TensorFlow, and back.
"""
from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import Callable, NoReturn

from evalstack.config import ModelError, ModelSpec
from evalstack.core.keys import sha256_file
from evalstack.models.adapters.base import ModelAdapter
from evalstack.models.trust import refuse_pickle_for_data_adapter

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


# adapters whose loader unpickles: they call models.trust.require_trusted on every file they load
UNPICKLING = frozenset({"torch"})


def load_adapter(spec: ModelSpec) -> ModelAdapter:
    if spec.adapter not in ADAPTERS:
        raise ModelError(f"model {spec.name}: adapter {spec.adapter!r} unknown; registered: {sorted(ADAPTERS)}")
    if spec.adapter not in UNPICKLING and spec.file.is_file():
        refuse_pickle_for_data_adapter(spec.name, spec.file, spec.adapter)
    adapter = adapter_class(spec.adapter)(spec)
    _refuse_a_file_replaced_while_loading(spec, adapter)
    return adapter


def _refuse_a_file_replaced_while_loading(spec: ModelSpec, adapter: ModelAdapter) -> None:
    """The signature names the sha256 the adapter took before its framework read the file. A file replaced in
    between (a `dvc checkout` or a copy during the load) would key one model's results by another's bytes, so
    the file is hashed again once loaded: the same sha256 on both sides of the load means those bytes loaded."""
    hashed = getattr(adapter, "weights_sha256", None)
    if isinstance(hashed, str) and spec.file.is_file() and sha256_file(spec.file) != hashed:
        raise ModelError(f"model {spec.name}: {spec.file} changed while it was being loaded; run the stage again "
                         "once nothing is writing it")


def end_process(code: int = 0) -> NoReturn:
    """End a stage that loaded a framework without the interpreter's teardown. Finalising torch or
    TensorFlow takes seconds (measured on a busy 2-core machine: torch 2.9 s, TensorFlow 5.6 s, numpy
    0.1 s), paid by every run of the stage; its outputs are written and fsynced by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


__all__ = ["ADAPTERS", "ModelAdapter", "ModelError", "ModelSpec", "adapter_class", "end_process", "load_adapter"]
