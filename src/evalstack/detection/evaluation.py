"""The detection evaluate stage: COCO raw layer + detections layer → DVC metrics, plots, tables.

`metrics/<model>.json` keeps a few headline scalars so `dvc metrics show` stays
readable; every COCO statistic, per-class AP, the TP/FP/FN totals and the
forward passes per split go to a details JSON. It also writes the detections in
COCO results format, so anyone can rerun pycocotools on the original annotations
JSON and that file and get the same figures (tests do exactly that).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from evalstack.config import ModelError, ModelSpec
from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.keys import Key, sha256_file
from evalstack.detection.labels import NOT_SCORED, check_mode, checked_label_map, scored_document
from evalstack.detection.layer import DetectionTable, open_detections, read_table
from evalstack.detection.metrics import DetectionReport, check_ap, evaluate_detections
from evalstack.evaluation.classification import _csv
from evalstack.sources.coco import CocoDataset, coco_document, read_ground_truth

HEADLINE = ("mAP", "mAP50", "AR100")  # what metrics/<model>.json shows; the rest is in the details JSON


@dataclass(frozen=True)
class Scoring:
    """How detections are scored (params `evaluate`); none of it needs a forward pass or a post-processing."""

    count_threshold: float = 0.5  # per-image TP/FP/FN count detections scoring at least this
    ap: str = "coco"  # coco: pycocotools' 101 recall points; coco11: 11, as PerceptionMetrics (metrics.py)
    categories: str = "dataset"  # dataset: every category (ones the model lacks score 0); model: only its own

    def __post_init__(self) -> None:
        check_ap(self.ap)
        check_mode(self.categories)

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> "Scoring":
        return cls(float(section.get("count_threshold", 0.5)), str(section.get("ap", "coco")),
                   str(section.get("categories", "dataset")))


@dataclass(frozen=True)
class DetectionOutputs:
    metrics: Path  # JSON for `dvc metrics`
    per_class: Path  # CSV plot: class, AP, AP50
    pr_curve: Path  # CSV plot: recall, precision at IoU 0.5
    per_image: Path  # CSV table: image_id, file_name, n_gt, n_det, tp, fp, fn
    detections: Path  # COCO results JSON of the evaluated split
    details: Path  # JSON: every COCO statistic, per-class AP, counts, forward passes per split


@dataclass(frozen=True)
class DetectionEvaluation:
    report: DetectionReport
    results: list[dict[str, Any]]  # COCO results format
    file_names: dict[int, str]
    forward_passes_by_split: dict[str, int]  # behind the detections layer (run by infer, recorded in its index)
    images_without_detections: int  # of the split: no detection at all, at any score
    categories: dict[str, Any]  # which categories were scored, which the model lacks (LabelMap.summary)
    category_metrics: dict[str, Any]  # the same for metrics/<model>.json (LabelMap.metrics)


def coco_results(table: DetectionTable, rows: list[int], categories: np.ndarray) -> list[dict[str, Any]]:
    """Detections of the given rows in COCO results format (image by image, detections in stored order);
    a class that is no dataset category (`categories[label]` NOT_SCORED) is left out."""
    results = []
    for row in rows:
        found = table.detections(row)
        image_id = int(table.ids[row])
        for box, label, score in zip(found.boxes.tolist(), found.labels.tolist(), found.scores.tolist()):
            category = int(categories[label])
            if category != NOT_SCORED:
                results.append({"image_id": image_id, "category_id": category, "bbox": box, "score": score})
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
    expected_key: Key | None,
    split: str,
    scoring: Scoring = Scoring(),
    sha256: Callable[[Path], str] | None = None,
) -> DetectionEvaluation:
    """One split's COCO evaluation; the detections layer is checked (key, shard sha256, per-image checksums)."""
    dataset = read_ground_truth(raw_dir)
    labels = checked_label_map(spec, dataset.categories, scoring.categories)
    layer = open_detections(detections_dir, expected_key, f"dvc repro postprocess@{spec.name}")
    table = read_table(layer, sha256 or sha256_file)  # remembered hashes when the stage has a store
    rows = split_rows(table, dataset, split, spec.name)
    results = coco_results(table, rows, labels.category_ids)
    document = scored_document(coco_document(dataset, split), labels, scoring.categories)
    report = evaluate_detections(document, results, scoring.count_threshold, scoring.ap)
    names = {image.image_id: image.file_name for image in dataset.images if image.split == split}
    empty = int(np.count_nonzero(table.counts[rows] == 0)) if rows else 0
    by_split = {str(k): int(v) for k, v in layer.index.stats.get("forward_passes_by_split", {}).items()}
    return DetectionEvaluation(report, results, names, by_split, empty, labels.summary(scoring.categories),
                               labels.metrics())


def write_detection_outputs(evaluation: DetectionEvaluation, split: str, outputs: DetectionOutputs) -> None:
    report, results, file_names = evaluation.report, evaluation.results, evaluation.file_names
    for path in (outputs.metrics, outputs.per_class, outputs.pr_curve, outputs.per_image, outputs.detections,
                 outputs.details):
        path.parent.mkdir(parents=True, exist_ok=True)
    # Full float precision: the figures must equal pycocotools' exactly, not to six places.
    passes = evaluation.forward_passes_by_split.get(split, 0)
    metrics = {**{name: report.stats[name] for name in HEADLINE}, "forward_passes": passes, "ap": report.ap,
               **evaluation.category_metrics}
    atomic_write_bytes(outputs.metrics, (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
    details = {
        **report.summary(), "split": split, "forward_passes": passes,
        "forward_passes_by_split": evaluation.forward_passes_by_split,
        "n_images_without_detections": evaluation.images_without_detections,  # no detection at any score
        "categories": evaluation.categories,
    }
    atomic_write_bytes(outputs.details, (json.dumps(details, indent=2, sort_keys=True) + "\n").encode())
    per_class = [(name, _cell(ap), _cell(report.per_class_ap50[name])) for name, ap in report.per_class_ap.items()]
    atomic_write_bytes(outputs.per_class, _csv([("class", "AP", "AP50"), *per_class]))
    atomic_write_bytes(outputs.pr_curve, _csv([("recall", "precision"), *((f"{r:.2f}", f"{p:.6f}") for r, p in report.pr_curve)]))
    rows = [(c.image_id, file_names[c.image_id], c.n_gt, c.n_det, c.tp, c.fp, c.fn) for c in report.per_image]
    atomic_write_bytes(outputs.per_image, _csv([("image_id", "file_name", "n_gt", "n_det", "tp", "fp", "fn"), *rows]))
    atomic_write_bytes(outputs.detections, json.dumps(results, separators=(",", ":")).encode())


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"
