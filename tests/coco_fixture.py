"""A hand-made COCO dataset small enough to compute its metrics by hand (see test_detection_metrics)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from evalstack.demo.cards import encode_png
from evalstack.sources.coco import CocoSplit

CATEGORIES = [{"id": 1, "name": "circle", "supercategory": "shape"}, {"id": 2, "name": "square", "supercategory": "shape"}]
IMAGES = [
    {"id": 1, "file_name": "one.png", "width": 64, "height": 48},
    {"id": 2, "file_name": "two.png", "width": 40, "height": 40},
    {"id": 3, "file_name": "empty.png", "width": 32, "height": 24},  # no ground truth
]
ANNOTATIONS = [
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0], "area": 400.0, "iscrowd": 0},
    {"id": 2, "image_id": 1, "category_id": 1, "bbox": [36.0, 20.0, 20.0, 20.0], "area": 400.0, "iscrowd": 0},
    {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0.0, 0.0, 30.0, 30.0], "area": 900.0, "iscrowd": 0},
]


def document(**changes: Any) -> dict[str, Any]:
    doc = {"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}
    return copy.deepcopy({**doc, **changes})


def write_coco(root: Path, doc: dict[str, Any] | None = None, split: str = "val") -> CocoSplit:
    """Annotations JSON + one PNG per image (random pixels of the stated size); returns the split entry."""
    doc = document() if doc is None else doc
    images = root / "images" / split
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image in doc["images"]:
        pixels = rng.integers(0, 256, size=(image["height"], image["width"], 3), dtype=np.uint8)
        (images / image["file_name"]).write_bytes(encode_png(pixels))
    annotations = root / "annotations" / f"instances_{split}.json"
    annotations.parent.mkdir(parents=True, exist_ok=True)
    annotations.write_text(json.dumps(doc))
    return CocoSplit(annotations=str(annotations), images=str(images))
