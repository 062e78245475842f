"""Detections and box arithmetic: the per-image record, IoU, class-wise greedy NMS (numpy).

torchvision is not available here (no CPU wheel), so NMS is implemented with
torchvision's semantics: boxes are visited in descending score order and a box
is suppressed when its IoU with a kept box of the same class is strictly
greater than the threshold. Ties in score keep the earlier box (stable sort),
so the result does not depend on anything but the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes (n, 4) float32, labels (n,) int64, scores (n,) float32.

    Boxes are xyxy in model-input pixels as a detector returns them, and COCO xywh
    in original-image pixels once mapped back (what the predictions layer stores).
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        if np.shape(self.boxes) != (n, 4) or np.shape(self.scores) != (n,):
            raise ValueError(f"detections disagree in length: boxes {np.shape(self.boxes)}, "
                             f"labels {np.shape(self.labels)}, scores {np.shape(self.scores)}")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))


@dataclass(frozen=True)
class Candidates:
    """One image's raw candidates before threshold and NMS: boxes (n, 4) float64 xyxy in model-input
    pixels, labels (n,) int64, scores (n,) float64, in descending score order (ties: decoding order).

    Kept in full precision, so post-processing them later gives the very bytes decoding and
    post-processing in one go would have given.
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        if np.shape(self.boxes) != (n, 4) or np.shape(self.scores) != (n,):
            raise ValueError(f"candidates disagree in length: boxes {np.shape(self.boxes)}, "
                             f"labels {np.shape(self.labels)}, scores {np.shape(self.scores)}")

    def __len__(self) -> int:
        return len(self.labels)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(…, len(a), len(b)) IoU of xyxy boxes (…, n, 4) and (…, m, 4), leading axes broadcast (a batch of
    images at once gives each image's matrix, the same numbers); degenerate boxes have IoU 0 with everything."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    # Coordinate by coordinate rather than np.prod/np.clip over a length-2 axis: the same float64 products
    # (w * h, negatives floored at 0) bit for bit, ~5x faster on the padded NMS batches (tests/test_boxes.py).
    width = np.minimum(a[..., :, None, 2], b[..., None, :, 2]) - np.maximum(a[..., :, None, 0], b[..., None, :, 0])
    height = np.minimum(a[..., :, None, 3], b[..., None, :, 3]) - np.maximum(a[..., :, None, 1], b[..., None, :, 1])
    inter = np.maximum(width, 0) * np.maximum(height, 0)
    area_a = np.maximum(a[..., 2] - a[..., 0], 0) * np.maximum(a[..., 3] - a[..., 1], 0)
    area_b = np.maximum(b[..., 2] - b[..., 0], 0) * np.maximum(b[..., 3] - b[..., 1], 0)
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _greedy(bitsets: np.ndarray, count: int) -> list[int]:
    """Greedy NMS over the first `count` boxes, given for each box the bit set (packed, little-endian) of
    the boxes it suppresses: a box is kept unless a kept box before it suppresses it. A Python integer
    per row makes each step a few integer operations instead of a numpy call."""
    suppressed, keep = 0, []
    for i in range(count):
        if not (suppressed >> i) & 1:
            keep.append(i)
            suppressed |= int.from_bytes(bitsets[i].tobytes(), "little")
    return keep


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by class-wise greedy NMS, in descending score order."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    if len(order) == 0:
        return order.astype(np.int64)
    ious = iou_matrix(boxes[order], boxes[order])
    suppresses = (labels[order][:, None] == labels[order][None, :]) & (ious > iou_threshold)
    rows = np.packbits(suppresses, axis=1, bitorder="little")
    return order[np.asarray(_greedy(rows, len(order)), dtype=np.int64)]


def nms_sorted_batch(boxes: np.ndarray, labels: np.ndarray, counts: np.ndarray,
                     iou_threshold: float) -> list[np.ndarray]:
    """`nms` of many images at once, for boxes already in descending score order (ties in the given order,
    as `nms`'s stable sort leaves them): boxes (B, M, 4) and labels (B, M), image b's first counts[b] rows
    real, the rest padding. Returns each image's kept row indices — exactly what `nms` returns for it."""
    ious = iou_matrix(boxes, boxes)
    suppresses = (labels[:, :, None] == labels[:, None, :]) & (ious > iou_threshold)
    rows = np.packbits(suppresses, axis=2, bitorder="little")
    return [np.asarray(_greedy(rows[b], int(count)), dtype=np.int64) for b, count in enumerate(counts)]


def matched_count(reference: Detections, other: Detections, iou_threshold: float = 0.5) -> int:
    """How many `reference` boxes find a partner in `other`: same label, IoU ≥ the threshold, one-to-one,
    greedy in descending reference score (each taking its best-overlapping free partner)."""
    if len(reference) == 0 or len(other) == 0:
        return 0
    ious = iou_matrix(xywh_to_xyxy(reference.boxes), xywh_to_xyxy(other.boxes))
    ious[reference.labels[:, None] != other.labels[None, :]] = -1.0
    taken = np.zeros(len(other), dtype=bool)
    matched = 0
    for row in np.argsort(-np.asarray(reference.scores), kind="stable"):
        candidates = np.where(taken, -1.0, ious[row])
        best = int(np.argmax(candidates))
        if candidates[best] >= iou_threshold:
            taken[best] = True
            matched += 1
    return matched
