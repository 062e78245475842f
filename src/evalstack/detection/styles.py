"""Post-processing styles: in which order a detector thresholds, suppresses and caps, recorded per candidates layer.

A candidates layer records its style in its index stats (`postprocess`) and in its key (the adapter's
contract), so a detections layer is always post-processed the way its model post-processes, never mixed:

- `cap_then_nms` (the centernet contract, detection/decoding.py): score >= threshold, the best
  `max_detections`, then class-wise NMS (numpy).
- `nms_then_cap` (torchvision's detectors, YOLO-layout models): score > threshold (strict), class-wise
  NMS by `torchvision.ops.batched_nms`, then the first `max_detections` kept. The cache holds the model's
  own candidates with its NMS opened (IoU 1.0), at most `candidates.top_k` per image.
- `frozen`: the model's post-processing is inside the file and cannot be opened (a `.pt2`, or a module
  whose thresholds or coordinates are out of reach). The cache holds what the model outputs; the
  values it ran with are recorded, and only changes that its output already answers exactly are allowed.

Why post-processing calls torchvision here instead of a numpy copy: `batched_nms` switches between two
algorithms by box count and device (per-class NMS above 4,000 coordinates on the CPU, 100,000 on CUDA;
below, one NMS over boxes offset by class in float32, where the offset's rounding can change an IoU),
and its kernel sorts and compares in float32. Calling it on the same float32 boxes in the same order
gives its answer by construction, in every torchvision version; a copy would have to track all of that.
It is imported only when a layer of this style is post-processed: the centernet path never pays for it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from evalstack.config import ModelError
from evalstack.detection.boxes import Candidates
from evalstack.detection.decoding import CandidateBound, PostProcess

CAP_THEN_NMS, NMS_THEN_CAP, FROZEN = "cap_then_nms", "nms_then_cap", "frozen"
STYLES = (CAP_THEN_NMS, NMS_THEN_CAP, FROZEN)


@dataclass(frozen=True)
class StyleRecord:
    """How a candidates layer is post-processed. `box_map` = ((h, w) where the model's NMS ran, (H, W) of its
    input) when the model resizes internally (torchvision's transform): cached boxes are in the former, and
    torchvision's own `resize_boxes` maps the kept ones to the latter, as the model does after its NMS.
    `nms_device`: the device kind the model ran on (batched_nms picks its algorithm by it).
    `frozen`: the values a frozen model ran with (confidence_threshold, nms_iou, max_detections)."""

    style: str = CAP_THEN_NMS
    nms_device: str = "cpu"
    box_map: tuple[tuple[int, int], tuple[int, int]] | None = None
    frozen: PostProcess | None = None
    reason: str = ""  # why the post-processing is frozen

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ModelError(f"post-processing style {self.style!r} unknown; known: {', '.join(STYLES)}")

    def to_stats(self) -> dict[str, Any]:
        record = {"style": self.style, "nms_device": self.nms_device, "reason": self.reason,
                  "box_map": [list(hw) for hw in self.box_map] if self.box_map else None,
                  "frozen": asdict(self.frozen) if self.frozen else None}
        return record

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> "StyleRecord":
        """The record in a candidates layer's stats; a layer without one is a centernet layer."""
        record = stats.get("postprocess") or {}
        box_map = record.get("box_map")
        frozen = record.get("frozen")
        return cls(style=record.get("style", CAP_THEN_NMS), nms_device=record.get("nms_device", "cpu"),
                   box_map=(tuple(box_map[0]), tuple(box_map[1])) if box_map else None,
                   frozen=PostProcess(**frozen) if frozen else None, reason=record.get("reason", ""))


def check_style_covers(style: StyleRecord, bound: CandidateBound, post: PostProcess, model: str) -> None:
    """Refuse, before any work, post-processing the stored candidates cannot answer exactly."""
    if style.style == CAP_THEN_NMS:
        bound.check_covers(post, model)
        return
    if style.style == NMS_THEN_CAP:
        if post.confidence_threshold < bound.min_score:
            raise ModelError(
                f"model {model}: confidence_threshold {post.confidence_threshold} is below candidates.min_score "
                f"{bound.min_score}, so the stored candidates lack what it would keep; lower models.{model}."
                f"candidates.min_score (infer reruns once) or raise the threshold")
        return  # max_detections: the cap comes after NMS, any value is exact (cut images: check_cut)
    frozen = style.frozen
    assert frozen is not None
    wanted = (f"confidence_threshold {post.confidence_threshold}, nms_iou {post.nms_iou}, "
              f"max_detections {post.max_detections}")
    ran = (f"confidence_threshold {frozen.confidence_threshold}, nms_iou {frozen.nms_iou}, "
           f"max_detections {frozen.max_detections}")
    if (post.nms_iou != frozen.nms_iou or post.confidence_threshold < frozen.confidence_threshold
            or post.max_detections > frozen.max_detections):
        raise ModelError(
            f"model {model}: its post-processing is frozen ({style.reason}); it ran with {ran}, and params ask for "
            f"{wanted}. Another NMS IoU, a lower threshold or more detections would need the model's NMS run "
            f"again at those values, which this file does not allow, so evalstack refuses rather than ignore "
            f"the change. Allowed without it: the same nms_iou, a threshold at or above "
            f"{frozen.confidence_threshold}, at most {frozen.max_detections} detections; or give a model whose "
            f"post-processing can be opened (TorchScript or state_dict + builder)")


def check_cut(candidates: Candidates, bound: CandidateBound, post: PostProcess, model: str, image: Any) -> None:
    """An image that filled candidates.top_k may have lost candidates scoring at or below its lowest kept one:
    a threshold below that score would need them. Refuse, naming what to raise."""
    if len(candidates) >= bound.top_k and post.confidence_threshold < float(candidates.scores[-1]):
        raise ModelError(
            f"model {model}: image {image} filled candidates.top_k ({bound.top_k} candidates kept), the lowest "
            f"kept scoring {float(candidates.scores[-1]):.6g}; confidence_threshold {post.confidence_threshold} "
            f"is below it and would need candidates infer did not keep. Raise models.{model}.candidates.top_k "
            f"(infer reruns once) or set confidence_threshold to at least {float(candidates.scores[-1]):.6g}")


def nms_then_cap_rows(candidates: Candidates, post: PostProcess, style: StyleRecord) -> np.ndarray:
    """Rows of one image's candidates (score-sorted, float32 values) that the model configured with `post`
    returns, in its order: score > threshold (torchvision's strict `>`), batched_nms, the first max_detections."""
    import torch
    from torchvision.ops import boxes as box_ops

    above = np.flatnonzero(candidates.scores > post.confidence_threshold)
    if not len(above):
        return above.astype(np.int64)
    boxes = torch.from_numpy(candidates.boxes[above].astype(np.float32))
    scores = torch.from_numpy(candidates.scores[above].astype(np.float32))
    labels = torch.from_numpy(candidates.labels[above].astype(np.int64))
    keep = _batched_nms(box_ops, boxes, scores, labels, post.nms_iou, style.nms_device)
    return above[keep[: post.max_detections].numpy()]


def _batched_nms(box_ops, boxes, scores, labels, iou: float, device_kind: str):
    """torchvision.ops.batched_nms as it ran on `device_kind`: it picks its algorithm by box count and device
    type (CPU above 4,000 coordinates: per class; CUDA: offsets up to 100,000), so the same choice is made here
    for boxes held on the CPU."""
    if device_kind == "cpu":
        return box_ops.batched_nms(boxes, scores, labels, iou)
    if boxes.numel() > 100_000:
        return box_ops._batched_nms_vanilla(boxes, scores, labels, iou)
    return box_ops._batched_nms_coordinate_trick(boxes, scores, labels, iou)


def frozen_rows(candidates: Candidates, post: PostProcess) -> np.ndarray:
    """A frozen model's output at a stricter setting: the same NMS IoU, a threshold at or above the one it ran
    with, at most as many detections. NMS is greedy in score order, so boxes it removes at the higher threshold
    could only have suppressed lower-scored boxes, removed too: filtering its output is exact."""
    return np.flatnonzero(candidates.scores > post.confidence_threshold)[: post.max_detections]


def map_boxes(boxes: np.ndarray, style: StyleRecord) -> np.ndarray:
    """Kept boxes from where the model's NMS ran to its input size, with torchvision's own resize_boxes."""
    if style.box_map is None or not len(boxes):
        return boxes
    import torch
    from torchvision.models.detection.transform import resize_boxes

    internal, original = style.box_map
    mapped = resize_boxes(torch.from_numpy(boxes.astype(np.float32)), list(internal), list(original))
    return mapped.numpy().astype(np.float64)
