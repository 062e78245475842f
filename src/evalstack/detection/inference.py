"""Detection on plain arrays: forward pass, decoding, post-processing, boxes mapped back to the original image.

`detect_arrays` is the whole computation in one call, for a notebook or a naive
loop. The pipeline splits it in two cached layers: infer keeps each image's raw
candidates (detection/candidates.py) and postprocess applies the threshold, cap
and NMS to them (detection/postprocess.py), so a post-processing change needs no
forward pass. Both give the same boxes, byte for byte.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from evalstack.detection.boxes import Detections
from evalstack.detection.postprocess import to_original
from evalstack.preprocess.letterbox import Placement

if TYPE_CHECKING:  # the stage loads the adapter (a framework); this module only calls it
    from evalstack.detection.adapter import DetectionAdapter


def detect_arrays(adapter: DetectionAdapter, batch: np.ndarray, placed: Sequence[Placement]) -> list[Detections]:
    """Detections in COCO xywh of each original image, for model-ready arrays (N, H, W, 3)."""
    if len(batch) != len(placed):
        raise ValueError(f"{len(batch)} arrays but {len(placed)} placements")
    return [to_original(found, place) for found, place in zip(adapter.detect_batch(batch), placed)]
