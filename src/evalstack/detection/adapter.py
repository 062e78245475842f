"""Detection models: a torch.export/TorchScript grid detector + decoding, threshold and NMS.

Output contract of a detection model ("centernet" head, what evalstack's demo
detector exports): input (N, H, W, 3) float32 0–255 like every evalstack model,
output (N, K + 4, Gh, Gw) for K labels on a grid of stride H / Gh:

- channels 0..K-1: class heatmap logits (sigmoid = confidence that an object
  of that class is centred in the cell);
- K, K+1: centre offset inside the cell, as logits (sigmoid = 0–1 of a cell);
- K+2, K+3: log of box width and height in cells.

Post-processing follows CenterNet: a cell is a candidate when its score is the
maximum of its 3×3 neighbourhood; candidates under `confidence_threshold` are
dropped, the best `max_detections` kept, then class-wise NMS at `nms_iou`.
These parameters change the predictions, so they are part of the model's
signature and hence of the predictions key.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
from scipy.ndimage import maximum_filter
from scipy.special import expit

from evalstack.config import ModelError, ModelSpec
from evalstack.detection.boxes import Detections, nms
from evalstack.models.adapters.torch_export import TorchAdapter

OUTPUT_FORMAT = "centernet/1"
MAX_LOG_SIZE = 8.0  # e^8 cells: far beyond any image; keeps exp() finite on wild outputs


@dataclass(frozen=True)
class PostProcess:
    confidence_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence_threshold < 1.0:
            raise ModelError(f"confidence_threshold {self.confidence_threshold} is not in [0, 1)")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ModelError(f"nms_iou {self.nms_iou} is not in (0, 1]")
        if self.max_detections < 1:
            raise ModelError(f"max_detections {self.max_detections} must be at least 1")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "PostProcess":
        defaults = cls()
        return cls(
            confidence_threshold=float(options.get("confidence_threshold", defaults.confidence_threshold)),
            nms_iou=float(options.get("nms_iou", defaults.nms_iou)),
            max_detections=int(options.get("max_detections", defaults.max_detections)),
        )


def decode_centernet(output: np.ndarray, n_classes: int, input_hw: tuple[int, int], post: PostProcess) -> Detections:
    """One image's raw head output (K + 4, Gh, Gw) → detections, xyxy in model-input pixels."""
    output = np.asarray(output, dtype=np.float64)
    heat = expit(output[:n_classes])
    stride_y, stride_x = input_hw[0] / heat.shape[1], input_hw[1] / heat.shape[2]
    peaks = (heat == maximum_filter(heat, size=(1, 3, 3), mode="constant", cval=0.0)) & (
        heat >= post.confidence_threshold
    )
    flat = np.flatnonzero(peaks)
    scores = heat.reshape(-1)[flat]
    best = np.argsort(-scores, kind="stable")[: post.max_detections]
    flat, scores = flat[best], scores[best]
    labels, gy, gx = np.unravel_index(flat, heat.shape)
    cx = (gx + expit(output[n_classes, gy, gx])) * stride_x
    cy = (gy + expit(output[n_classes + 1, gy, gx])) * stride_y
    w = np.exp(np.clip(output[n_classes + 2, gy, gx], -MAX_LOG_SIZE, MAX_LOG_SIZE)) * stride_x
    h = np.exp(np.clip(output[n_classes + 3, gy, gx], -MAX_LOG_SIZE, MAX_LOG_SIZE)) * stride_y
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    keep = nms(boxes, scores, labels, post.nms_iou)
    return Detections(boxes[keep], labels[keep].astype(np.int64), scores[keep].astype(np.float32))


class DetectionAdapter(TorchAdapter):
    """A PyTorch detector whose output follows the centernet contract above."""

    def __init__(self, spec: ModelSpec):
        if spec.task != "detect":
            raise ModelError(f"model {spec.name}: adapter torch_detection needs `task: detect`, not {spec.task!r}")
        super().__init__(spec)
        self.postprocess = PostProcess.from_options(spec.options)

    def contract(self) -> dict[str, Any]:
        return {**super().contract(), "output_format": OUTPUT_FORMAT, "postprocess": asdict(self.postprocess)}

    def detect_batch(self, batch: np.ndarray) -> list[Detections]:
        """Detections per item, xyxy in model-input pixels, for model-ready arrays (N, H, W, 3)."""
        raw = self.predict_batch(batch)
        n_classes = len(self.spec.labels)
        if raw.ndim != 4 or raw.shape[0] != len(batch) or raw.shape[1] != n_classes + 4:
            raise ModelError(
                f"model {self.spec.name}: output shape {raw.shape}, expected ({len(batch)}, {n_classes + 4}, Gh, Gw) "
                f"for {n_classes} labels ({OUTPUT_FORMAT})"
            )
        input_hw = (int(np.shape(batch)[1]), int(np.shape(batch)[2]))
        return [decode_centernet(item, n_classes, input_hw, self.postprocess) for item in raw]


DETECTION_ADAPTERS: dict[str, type[DetectionAdapter]] = {"torch_detection": DetectionAdapter}


def load_detector(spec: ModelSpec) -> DetectionAdapter:
    """The detection profile's adapter registry (the classification frameworks are in models.adapters)."""
    if spec.adapter not in DETECTION_ADAPTERS:
        raise ModelError(f"model {spec.name}: detection adapter {spec.adapter!r} unknown; "
                         f"registered: {sorted(DETECTION_ADAPTERS)}")
    return DETECTION_ADAPTERS[spec.adapter](spec)
