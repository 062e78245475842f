"""Named label presets for detectors trained on COCO, as data (nothing is fetched from a model hub).

A model's label list says, per output class index, what the class is; detection/labels.py matches the
names to the dataset's categories (so COCO's non-contiguous ids 1–90 come from the dataset, not from here).

- `coco80`: the 80 COCO classes in category-id order, as YOLO-style models number them (0–79).
- `coco91`: torchvision's COCO_V1 list (`weights.meta["categories"]`): index = COCO category id, with
  "__background__" at 0 and "N/A" at the ids COCO 2017 does not use (12, 26, 29, 30, 45, 66, 68, 69, 71, 83).
  Those slots match no dataset category, so detections in them are never scored.
"""
from __future__ import annotations

COCO91: tuple[str, ...] = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop",
    "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

COCO80: tuple[str, ...] = tuple(name for name in COCO91 if name not in ("__background__", "N/A"))

LABEL_PRESETS: dict[str, tuple[str, ...]] = {"coco80": COCO80, "coco91": COCO91}
