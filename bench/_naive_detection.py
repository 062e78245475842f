"""The naive corruption grid: what PerceptionMetrics' eval loop does without a cache.

For every (type, severity) cell it runs the clean baseline again and the corrupted pass, over the
split's original PNGs: decode, letterbox, forward, decode + threshold + NMS, map back; then scores
the cell (and the clean baseline again) with pycocotools. No predictions are stored. It uses
evalstack's own functions for each step (the same corruption per image content, the same
post-processing, the same two pycocotools figures), so its numbers can be compared cell by cell.

    python bench/_naive_detection.py <detection dir> <out.json>
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from evalstack.config import load_params, model_spec
from evalstack.detection.adapter import load_detector
from evalstack.detection.evaluation import coco_results
from evalstack.detection.grid import GridConfig
from evalstack.detection.inference import detect_arrays
from evalstack.detection.layer import DetectionTable
from evalstack.detection.metrics import coco_from_document, map_and_map50
from evalstack.preprocess import perturbations as perturb
from evalstack.preprocess.letterbox import build_letterbox

BATCH = 32


def main() -> None:
    detection, out = Path(sys.argv[1]), Path(sys.argv[2])
    params = load_params(detection / "params.yaml")
    spec = model_spec(params, "shapes_centernet", root=detection)
    adapter = load_detector(spec)
    pipeline = build_letterbox(params["preprocess"]["pipelines"][spec.pipeline])
    config = GridConfig.from_params(params["grid"])
    split = params["fetch"]["splits"][config.split]
    document = json.loads((detection / split["annotations"]).read_text())
    images = sorted(document["images"], key=lambda image: image["id"])
    categories = np.asarray([{c["name"]: c["id"] for c in document["categories"]}[name] for name in spec.labels])
    started = time.monotonic()
    cells = {}
    for cell in config.cells():
        clean_found, corrupted_found = [], []
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH]
            clean, corrupted, placed = [], [], []
            for image in chunk:
                blob = (detection / split["images"] / image["file_name"]).read_bytes()
                original = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
                key = hashlib.sha256(blob).hexdigest()
                clean.append(pipeline.process_image(Image.fromarray(original)))
                corrupted.append(pipeline.process_image(Image.fromarray(
                    perturb.perturb(original, cell.kind, cell.severity, key, config.seed))))
                placed.append(pipeline.placement(original.shape[1], original.shape[0]))
            clean_found += detect_arrays(adapter, np.stack(clean), placed)  # the clean baseline, again
            corrupted_found += detect_arrays(adapter, np.stack(corrupted), placed)
        ids = [image["id"] for image in images]
        figures = {}
        for name, found in (("clean", clean_found), ("corrupted", corrupted_found)):
            table = DetectionTable.from_detections(["0" * 64] * len(ids), ids, [config.split] * len(ids), found)
            results = coco_results(table, list(range(len(ids))), categories)  # built here: handed over, not copied
            figures[name] = map_and_map50(coco_from_document(document), results, owned=True)
        cells[cell.name] = {"mAP": figures["corrupted"][0], "mAP50": figures["corrupted"][1],
                            "P_clean": figures["clean"][0]}
        print(f"{cell.name}: mAP {figures['corrupted'][0]:.4f} ({time.monotonic() - started:.0f} s)", flush=True)
    seconds = time.monotonic() - started
    out.write_text(json.dumps({"seconds": seconds, "forward_passes": adapter.forward_passes,
                               "forward_seconds": adapter.forward_seconds, "images": len(images), "cells": cells},
                              indent=1))


if __name__ == "__main__":
    main()
