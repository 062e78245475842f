"""Decoding a centernet head and post-processing detections: numpy and scipy only, no framework.

Output contract of a detection model ("centernet" head, what evalstack's demo
detector exports): input (N, H, W, 3) float32 0–255 like every evalstack model,
output (N, K + 4, Gh, Gw) for K labels on a grid of stride H / Gh:

- channels 0..K-1: class heatmap logits (sigmoid = confidence that an object
  of that class is centred in the cell);
- K, K+1: centre offset inside the cell, as logits (sigmoid = 0–1 of a cell);
- K+2, K+3: log of box width and height in cells.

Decoding follows CenterNet: a cell is a candidate when its score is the maximum
of its 3×3 neighbourhood. The infer stage keeps each image's candidates scoring at
least `candidates.min_score`, the best `candidates.top_k` of them (`Candidates`,
part of the model signature); post-processing then drops candidates under
`confidence_threshold`, keeps the best `max_detections` and runs class-wise NMS
at `nms_iou`. Candidates are sorted by score, so the candidates above a threshold
are a prefix of them: post-processing stored candidates gives exactly what
decoding with the threshold would have, as long as `confidence_threshold >=
min_score` and `max_detections <= top_k` (checked). The three post-processing
params are therefore not part of the model signature: changing one reruns only
post-processing. Stages that only post-process or score import this module, never
the framework.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy.ndimage import maximum_filter
from scipy.special import expit

from evalstack.config import ModelError
from evalstack.detection.boxes import Candidates, Detections, nms

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


@dataclass(frozen=True)
class CandidateBound:
    """What the infer stage keeps per image: candidates scoring >= min_score, at most top_k of them."""

    min_score: float = 0.01
    top_k: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score < 1.0:
            raise ModelError(f"candidates.min_score {self.min_score} is not in [0, 1)")
        if self.top_k < 1:
            raise ModelError(f"candidates.top_k {self.top_k} must be at least 1")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "CandidateBound":
        section = options.get("candidates") or {}
        if not isinstance(section, Mapping):
            raise ModelError(f"candidates must be a mapping (min_score, top_k), got {section!r}")
        unknown = set(section) - {"min_score", "top_k"}
        if unknown:
            raise ModelError(f"candidates: unknown keys {sorted(unknown)} (known: min_score, top_k)")
        defaults = cls()
        return cls(min_score=float(section.get("min_score", defaults.min_score)),
                   top_k=int(section.get("top_k", defaults.top_k)))

    def check_covers(self, post: PostProcess, model: str) -> None:
        """Post-processing stored candidates is exact only within the bound; say which param to change."""
        if post.confidence_threshold < self.min_score:
            raise ModelError(
                f"model {model}: confidence_threshold {post.confidence_threshold} is below candidates.min_score "
                f"{self.min_score}, so the stored candidates lack what it would keep; lower models.{model}."
                f"candidates.min_score (infer reruns once) or raise the threshold")
        if post.max_detections > self.top_k:
            raise ModelError(
                f"model {model}: max_detections {post.max_detections} exceeds candidates.top_k {self.top_k}; "
                f"raise models.{model}.candidates.top_k (infer reruns once) or lower max_detections")


def centernet_candidates(output: np.ndarray, n_classes: int, input_hw: tuple[int, int],
                         bound: CandidateBound) -> Candidates:
    """One image's raw head output (K + 4, Gh, Gw) → its candidates, xyxy in model-input pixels."""
    output = np.asarray(output, dtype=np.float64)
    heat = expit(output[:n_classes])
    stride_y, stride_x = input_hw[0] / heat.shape[1], input_hw[1] / heat.shape[2]
    peaks = (heat == maximum_filter(heat, size=(1, 3, 3), mode="constant", cval=0.0)) & (heat >= bound.min_score)
    flat = np.flatnonzero(peaks)
    scores = heat.reshape(-1)[flat]
    best = np.argsort(-scores, kind="stable")[: bound.top_k]
    flat, scores = flat[best], scores[best]
    labels, gy, gx = np.unravel_index(flat, heat.shape)
    cx = (gx + expit(output[n_classes, gy, gx])) * stride_x
    cy = (gy + expit(output[n_classes + 1, gy, gx])) * stride_y
    w = np.exp(np.clip(output[n_classes + 2, gy, gx], -MAX_LOG_SIZE, MAX_LOG_SIZE)) * stride_x
    h = np.exp(np.clip(output[n_classes + 3, gy, gx], -MAX_LOG_SIZE, MAX_LOG_SIZE)) * stride_y
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return Candidates(boxes, labels.astype(np.int64), scores)


def postprocess(candidates: Candidates, post: PostProcess) -> Detections:
    """Threshold, cap and class-wise NMS of score-sorted candidates (xyxy in model-input pixels)."""
    count = min(int(np.count_nonzero(candidates.scores >= post.confidence_threshold)), post.max_detections)
    boxes, labels, scores = candidates.boxes[:count], candidates.labels[:count], candidates.scores[:count]
    keep = nms(boxes, scores, labels, post.nms_iou)
    return Detections(boxes[keep], labels[keep].astype(np.int64), scores[keep].astype(np.float32))


def decode_centernet(output: np.ndarray, n_classes: int, input_hw: tuple[int, int], post: PostProcess) -> Detections:
    """One image's raw head output (K + 4, Gh, Gw) → detections, xyxy in model-input pixels."""
    bound = CandidateBound(min_score=post.confidence_threshold, top_k=post.max_detections)
    return postprocess(centernet_candidates(output, n_classes, input_hw, bound), post)
