"""The sensible naive corruption grid for a torchvision detector: what a user writes without evalstack.

torchvision's own model, configured with the params' thresholds (roi_heads.score_thresh, nms_thresh,
detections_per_img), runs the clean val images once, then each (type, severity) cell's corrupted images:
N + N·P·I forward passes, nothing stored, pycocotools per cell. It uses evalstack's decode, letterbox
and corruption functions (the same inputs as the grid), so its mAP can be compared cell by cell.

    python bench/_naive_torchvision.py <detection dir> <model name> <out.json>
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.models import detection as tv_detection

from evalstack.config import load_params, model_spec
from evalstack.detection.grid import GridConfig
from evalstack.detection.metrics import coco_from_document, map_and_map50
from evalstack.preprocess import perturbations as perturb
from evalstack.preprocess.letterbox import build_letterbox
from evalstack.preprocess.modes import decode_rgb

BATCH = 8


def detector(spec, params: dict) -> torch.nn.Module:
    options = spec.options
    model = getattr(tv_detection, options["builder"])(weights=None, weights_backbone=None,
                                                      num_classes=options["num_classes"])
    model.load_state_dict(torch.load(spec.file, weights_only=True))
    entry = params["models"][spec.name]
    model.roi_heads.score_thresh = entry["confidence_threshold"]
    model.roi_heads.nms_thresh = entry["nms_iou"]
    model.roi_heads.detections_per_img = entry["max_detections"]
    return model.eval()


def results(model, inputs: list[np.ndarray], placed, ids: list[int], category_of: dict[int, int]) -> list[dict]:
    """COCO results of the model's own output, boxes mapped back to each original image."""
    found = []
    with torch.inference_mode():
        for start in range(0, len(inputs), BATCH):
            tensors = [torch.from_numpy(x).permute(2, 0, 1).float() / 255 for x in inputs[start : start + BATCH]]
            for offset, out in enumerate(model(tensors)):
                row = start + offset
                boxes = placed[row].to_original(out["boxes"].numpy().astype(np.float64))
                for box, label, score in zip(boxes, out["labels"].tolist(), out["scores"].tolist()):
                    width, height = box[2] - box[0], box[3] - box[1]
                    if width > 0 and height > 0 and label in category_of:
                        found.append({"image_id": ids[row], "category_id": category_of[label],
                                      "bbox": [float(box[0]), float(box[1]), float(width), float(height)],
                                      "score": float(score)})
    return found


def main() -> None:
    detection, name, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    params = load_params(detection / "params.yaml")
    spec = model_spec(params, name, root=detection)
    model = detector(spec, params)
    pipeline = build_letterbox(params["preprocess"]["pipelines"][spec.pipeline])
    config = GridConfig.from_params(params["grid"])
    split = params["fetch"]["splits"][config.split]
    document = json.loads((detection / split["annotations"]).read_text())
    images = sorted(document["images"], key=lambda image: image["id"])
    by_name = {c["name"]: c["id"] for c in document["categories"]}
    category_of = {index + 1: by_name[label] for index, label in enumerate(spec.labels)}  # 0 = background
    ids = [image["id"] for image in images]
    started = time.monotonic()
    originals, keys = [], []
    for image in images:
        blob = (detection / split["images"] / image["file_name"]).read_bytes()
        originals.append(decode_rgb(blob, 1 << 24, image["file_name"]))
        keys.append(hashlib.sha256(blob).hexdigest())
    placed = [pipeline.placement(o.shape[1], o.shape[0]) for o in originals]
    passes = 0
    clean = results(model, [pipeline.letterbox(o) for o in originals], placed, ids, category_of)
    passes += len(originals)
    clean_map = map_and_map50(coco_from_document(document), clean, owned=True)[0]
    cells = {}
    for cell in config.cells():
        corrupted = [pipeline.letterbox(perturb.perturb(o, cell.kind, cell.severity, key, config.seed))
                     for o, key in zip(originals, keys)]
        found = results(model, corrupted, placed, ids, category_of)
        passes += len(corrupted)
        cells[cell.name] = map_and_map50(coco_from_document(document), found, owned=True)[0]
        print(f"{cell.name}: mAP {cells[cell.name]:.4f} ({time.monotonic() - started:.0f} s)", flush=True)
    out.write_text(json.dumps({"seconds": time.monotonic() - started, "forward_passes": passes,
                               "clean": clean_map, "cells": cells}, indent=1))


if __name__ == "__main__":
    main()
