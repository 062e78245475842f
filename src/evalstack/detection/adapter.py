"""Detection models: a torch.export/TorchScript grid detector whose head output is decoded into
candidates and post-processed (detection/decoding.py holds the contract, decoding and post-processing).
"""
from __future__ import annotations

from dataclasses import asdict
from importlib import import_module
from typing import Any

import numpy as np

from evalstack.config import DETECTION_OUTSIDE_SIGNATURE, ModelError, ModelSpec
from evalstack.detection.boxes import Candidates, Detections
from evalstack.detection.decoding import (  # noqa: F401 - the names this module always offered
    MAX_LOG_SIZE,
    OUTPUT_FORMAT,
    CandidateBound,
    PostProcess,
    centernet_candidates,
    decode_centernet,
    postprocess,
)
from evalstack.detection.styles import CAP_THEN_NMS, StyleRecord
from evalstack.models.adapters.torch_export import TorchAdapter


class DetectionAdapter(TorchAdapter):
    """A PyTorch detector whose output follows the centernet contract above."""

    options_outside_signature = DETECTION_OUTSIDE_SIGNATURE

    def __init__(self, spec: ModelSpec):
        if spec.task != "detect":
            raise ModelError(f"model {spec.name}: adapter torch_detection needs `task: detect`, not {spec.task!r}")
        super().__init__(spec)
        self.postprocess = PostProcess.from_options(spec.options)
        self.bound = CandidateBound.from_options(spec.options)
        self.bound.check_covers(self.postprocess, spec.name)

    def contract(self) -> dict[str, Any]:
        """What the candidates depend on besides the weights; post-processing params are not in it."""
        return {**super().contract(), "output_format": OUTPUT_FORMAT, "candidates": asdict(self.bound)}

    def postprocess_style(self, input_hw: tuple[int, int]) -> StyleRecord:
        """The centernet contract caps, then suppresses (detection/styles.py)."""
        return StyleRecord(CAP_THEN_NMS)

    def candidates_batch(self, batch: np.ndarray) -> list[Candidates]:
        """Candidates per item, xyxy in model-input pixels, for model-ready arrays (N, H, W, 3)."""
        raw = self.predict_batch(batch)
        n_classes = len(self.spec.labels)
        if raw.ndim != 4 or raw.shape[0] != len(batch) or raw.shape[1] != n_classes + 4:
            raise ModelError(
                f"model {self.spec.name}: output shape {raw.shape}, expected ({len(batch)}, {n_classes + 4}, Gh, Gw) "
                f"for {n_classes} labels ({OUTPUT_FORMAT})"
            )
        input_hw = (int(np.shape(batch)[1]), int(np.shape(batch)[2]))
        return [centernet_candidates(item, n_classes, input_hw, self.bound) for item in raw]

    def detect_batch(self, batch: np.ndarray) -> list[Detections]:
        """Detections per item, xyxy in model-input pixels: candidates, then this model's post-processing."""
        return [postprocess(found, self.postprocess) for found in self.candidates_batch(batch)]


DETECTION_ADAPTERS: dict[str, type[DetectionAdapter] | tuple[str, str]] = {
    "torch_detection": DetectionAdapter,
    # (module, class): imported when asked for, so the centernet path never imports torchvision or onnxruntime
    "torchvision": ("evalstack.detection.torchvision_adapter", "TorchvisionAdapter"),
    "yolo": ("evalstack.detection.yolo_adapter", "YoloAdapter"),
}


def load_detector(spec: ModelSpec) -> DetectionAdapter:
    """The detection profile's adapter registry (the classification frameworks are in models.adapters)."""
    if spec.adapter not in DETECTION_ADAPTERS:
        raise ModelError(f"model {spec.name}: detection adapter {spec.adapter!r} unknown; "
                         f"registered: {sorted(DETECTION_ADAPTERS)}")
    found = DETECTION_ADAPTERS[spec.adapter]
    if isinstance(found, tuple):
        found = getattr(import_module(found[0]), found[1])
    return found(spec)
