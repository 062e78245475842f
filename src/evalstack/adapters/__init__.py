"""Model adapters, registered by the `adapter` name used in params.yaml."""
from __future__ import annotations

from typing import Callable

from evalstack.adapters.base import ModelAdapter, ModelError, ModelSpec


def _tflite(spec: ModelSpec) -> ModelAdapter:
    from evalstack.adapters.tflite import TFLiteAdapter

    return TFLiteAdapter(spec)


def _torch(spec: ModelSpec) -> ModelAdapter:
    from evalstack.adapters.torch_export import TorchAdapter

    return TorchAdapter(spec)


def _torch_detection(spec: ModelSpec) -> ModelAdapter:
    from evalstack.adapters.detection import DetectionAdapter

    return DetectionAdapter(spec)


# Imports are deferred so a TFLite-only user never pays for importing torch, and back.
ADAPTERS: dict[str, Callable[[ModelSpec], ModelAdapter]] = {"tflite": _tflite, "torch": _torch}
ADAPTERS["torch_detection"] = _torch_detection  # the detection profile's detectors (adapters/detection.py)


def load_adapter(spec: ModelSpec) -> ModelAdapter:
    if spec.adapter not in ADAPTERS:
        raise ModelError(f"model {spec.name}: adapter {spec.adapter!r} unknown; registered: {sorted(ADAPTERS)}")
    return ADAPTERS[spec.adapter](spec)


__all__ = ["ADAPTERS", "ModelAdapter", "ModelError", "ModelSpec", "load_adapter"]
