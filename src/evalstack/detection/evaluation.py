"""The detection evaluate stage: COCO raw layer + detections layer → DVC metrics, plots, tables.

It also writes the detections in COCO results format, so anyone can rerun
pycocotools on the original annotations JSON and that file and get the same
figures (tests do exactly that).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evalstack.config import ModelError, ModelSpec
from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.keys import Key
from evalstack.detection.layer import DetectionTable, open_detections, read_table
from evalstack.detection.metrics import DetectionReport, evaluate_detections
from evalstack.evaluation.classification import _csv
from evalstack.models.predictions import predictions_key
from evalstack.sources.coco import CocoDataset, coco_document, read_ground_truth


@dataclass(frozen=True)
class DetectionOutputs:
    metrics: Path  # JSON for `dvc metrics`
    per_class: Path  # CSV plot: class, AP, AP50
    pr_curve: Path  # CSV plot: recall, precision at IoU 0.5
    per_image: Path  # CSV table: image_id, file_name, n_gt, n_det, tp, fp, fn
    detections: Path  # COCO results JSON of the evaluated split


def coco_results(table: DetectionTable, rows: list[int], categories: np.ndarray) -> list[dict[str, Any]]:
    """Detections of the given rows in COCO results format (image by image, detections in stored order)."""
    results = []
    for row in rows:
        found = table.detections(row)
        image_id = int(table.ids[row])
        for box, label, score in zip(found.boxes.tolist(), found.labels.tolist(), found.scores.tolist()):
            results.append({"image_id": image_id, "category_id": int(categories[label]), "bbox": box, "score": score})
    return results


def split_rows(table: DetectionTable, dataset: CocoDataset, split: str, model: str) -> list[int]:
    """Rows of the detections table for every ground-truth image of `split`; missing images are an error."""
    wanted = [image.image_id for image in dataset.images if image.split == split]
    rows = {int(image_id): row for row, (image_id, s) in enumerate(zip(table.ids.tolist(), table.splits)) if s == split}
    missing = [image_id for image_id in wanted if image_id not in rows]
    if missing:
        raise ModelError(f"model {model}: the detections layer lacks {len(missing)} {split} images "
                         f"(e.g. {missing[:3]}); it was computed on other data — `dvc repro` infer")
    return [rows[image_id] for image_id in wanted]


def evaluate_detector(
    raw_dir: Path,
    detections_dir: Path,
    spec: ModelSpec,
    model_signature: Key,
    pipeline_key: Key,
    split: str,
    count_threshold: float = 0.5,
) -> tuple[DetectionReport, list[dict[str, Any]], dict[int, str], int]:
    """(report, COCO results, image id → file name, forward passes) for one split."""
    dataset = read_ground_truth(raw_dir)
    layer = open_detections(detections_dir, predictions_key(model_signature, pipeline_key), f"dvc repro infer@{spec.name}")
    table = read_table(layer)
    rows = split_rows(table, dataset, split, spec.name)
    results = coco_results(table, rows, dataset.category_ids(spec.labels, spec.name))
    report = evaluate_detections(coco_document(dataset, split), results, count_threshold)
    names = {image.image_id: image.file_name for image in dataset.images if image.split == split}
    return report, results, names, int(layer.index.stats.get("forward_passes", 0))


def write_detection_outputs(
    report: DetectionReport,
    results: list[dict[str, Any]],
    file_names: dict[int, str],
    forward_passes: int,
    outputs: DetectionOutputs,
) -> None:
    for path in (outputs.metrics, outputs.per_class, outputs.pr_curve, outputs.per_image, outputs.detections):
        path.parent.mkdir(parents=True, exist_ok=True)
    # Full float precision: the figures must equal pycocotools' exactly, not to six places.
    metrics = {**report.summary(), "forward_passes": forward_passes}
    atomic_write_bytes(outputs.metrics, (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
    per_class = [(name, _cell(ap), _cell(report.per_class_ap50[name])) for name, ap in report.per_class_ap.items()]
    atomic_write_bytes(outputs.per_class, _csv([("class", "AP", "AP50"), *per_class]))
    atomic_write_bytes(outputs.pr_curve, _csv([("recall", "precision"), *((f"{r:.2f}", f"{p:.6f}") for r, p in report.pr_curve)]))
    rows = [(c.image_id, file_names[c.image_id], c.n_gt, c.n_det, c.tp, c.fp, c.fn) for c in report.per_image]
    atomic_write_bytes(outputs.per_image, _csv([("image_id", "file_name", "n_gt", "n_det", "tp", "fp", "fn"), *rows]))
    atomic_write_bytes(outputs.detections, json.dumps(results, separators=(",", ":")).encode())


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"
