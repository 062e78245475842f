"""Random crowd-free detection sets for comparing `ap: coco11` with PerceptionMetrics' own AP (goldens)."""
from __future__ import annotations

from typing import Any

import numpy as np


def detection_set(seed: int, integer_boxes: bool = False, n_images: int = 20,
                  n_classes: int = 3) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(ground-truth document, results sorted by score per image): jittered true boxes, wrong labels, strays."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 200, "height": 200})
        k = int(rng.integers(0, 5))
        truth = np.hstack([rng.uniform(0, 150, (k, 2)), rng.uniform(10, 50, (k, 2))])
        labels = rng.integers(1, n_classes + 1, k)
        found = rng.random(k) < 0.8
        boxes = truth[found] + rng.normal(0, 4, (int(found.sum()), 4))
        predicted = labels[found].copy()
        wrong = rng.random(len(predicted)) < 0.15
        predicted[wrong] = rng.integers(1, n_classes + 1, int(wrong.sum()))
        strays = int(rng.integers(0, 3))
        boxes = np.vstack([boxes, np.hstack([rng.uniform(0, 150, (strays, 2)), rng.uniform(10, 50, (strays, 2))])])
        predicted = np.concatenate([predicted, rng.integers(1, n_classes + 1, strays)])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 1)
        if integer_boxes:  # IoUs land exactly on thresholds (0.6, 0.7, …) now and then
            truth, boxes = np.round(truth), np.round(boxes)
        scores = rng.random(len(predicted))
        order = np.argsort(-scores, kind="stable")
        for box, label in zip(truth.tolist(), labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
        for box, label, score in zip(boxes[order].tolist(), predicted[order].tolist(), scores[order].tolist()):
            results.append({"image_id": image_id, "category_id": label, "bbox": box, "score": score})
    categories = [{"id": c, "name": f"c{c}"} for c in range(1, n_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, results
