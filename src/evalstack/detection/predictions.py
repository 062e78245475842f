"""Detections computed elsewhere: a COCO results JSON scored like a model's clean row, with no model.

params.yaml declares them apart from `models:` (whose stages run a model: infer, postprocess, grid):

    predictions:
      my_detector:
        file: results/my_detector.json   # [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, …]

The file's detections are final: they are scored as given, so the figures equal pycocotools run
directly on the file (a test checks it). There is no candidate bound to re-threshold from, so
`confidence_threshold`, `nms_iou` and `max_detections` are refused rather than silently ignored or
silently applied to someone else's output; filter the file before, if that is wanted. Category ids are
the dataset's (a results file is written against the annotations); the dataset categories with no
detection in the file are warned about by name, as a model's missing classes are.

Every entry is checked before scoring, and an error names the entry: its image id must be an image of
the evaluated split, its category id a dataset category, its bbox four finite numbers with a width and
height >= 0, its score a finite number in [0, 1].
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from evalstack.config import PREDICTIONS, ConfigError, ModelSpec, entry
from evalstack.detection.evaluation import DetectionEvaluation, Scoring
from evalstack.detection.labels import checked_label_map, scored_document
from evalstack.detection.metrics import evaluate_detections
from evalstack.sources.coco import CocoDataset, coco_document, read_ground_truth

POSTPROCESSING = ("confidence_threshold", "nms_iou", "max_detections", "candidates")


class PredictionsError(ValueError):
    """A results JSON entry that cannot be scored; the message names it."""


@dataclass(frozen=True)
class PredictionsSpec:
    name: str
    file: Path


def predictions_spec(params: Mapping[str, Any], name: str, root: Path = Path(".")) -> PredictionsSpec:
    fields = dict(entry(params, PREDICTIONS, name))
    where = f"{PREDICTIONS}.{name}"
    if name in (params.get("models") or {}):
        raise ConfigError(f"{where}: models.{name} exists too; both would write metrics/{name}.json — rename one")
    if fields.get("adapter", PREDICTIONS) != PREDICTIONS:
        raise ConfigError(f"{where}: adapter {fields['adapter']!r}; entries here are results files (adapter "
                          f"predictions); a model goes under models:")
    applied = [key for key in POSTPROCESSING if key in fields]
    if applied:
        raise ConfigError(f"{where}: {', '.join(applied)}: a results file's detections are final and are scored as "
                          "given (no candidates to re-threshold or re-run NMS on); filter the file itself instead")
    unknown = sorted(set(fields) - {"file", "adapter"})
    if unknown or "file" not in fields:
        raise ConfigError(f"{where}: needs `file:` (a COCO results JSON) and nothing else; unknown keys {unknown}")
    return PredictionsSpec(name, root / fields["file"])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checked_entry(number: int, item: Any, images: set[int], categories: set[int], split: str,
                   where: str) -> dict[str, Any]:
    what = f"{where} entry {number}"
    if not isinstance(item, dict):
        raise PredictionsError(f"{what}: {item!r} is not an object with image_id, category_id, bbox, score")
    image_id, category_id, bbox, score = (item.get(key) for key in ("image_id", "category_id", "bbox", "score"))
    what += f" (image_id {image_id!r})"
    if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in images:
        raise PredictionsError(f"{what}: image_id is not an image of split {split!r}")
    if isinstance(category_id, bool) or not isinstance(category_id, int) or category_id not in categories:
        raise PredictionsError(f"{what}: category_id {category_id!r} is not a dataset category ({sorted(categories)})")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_finite(v) for v in bbox):
        raise PredictionsError(f"{what}: bbox {bbox!r} is not four finite numbers [x, y, width, height]")
    if bbox[2] < 0 or bbox[3] < 0:
        raise PredictionsError(f"{what}: bbox {bbox} has a negative width or height")
    if not _finite(score) or not 0.0 <= score <= 1.0:
        raise PredictionsError(f"{what}: score {score!r} is not a number in [0, 1]")
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def read_results(path: Path, dataset: CocoDataset, split: str) -> list[dict[str, Any]]:
    """The file's detections, each checked against the split's images and the dataset's categories."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PredictionsError(f"{path}: results file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PredictionsError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, list):
        raise PredictionsError(f"{path}: a COCO results file is a JSON list of detections, not {type(document).__name__}")
    images = {image.image_id for image in dataset.images if image.split == split}
    categories = {int(c["id"]) for c in dataset.categories}
    return [_checked_entry(n, item, images, categories, split, str(path)) for n, item in enumerate(document)]


def evaluate_predictions(raw_dir: Path, spec: PredictionsSpec, split: str,
                         scoring: Scoring = Scoring()) -> DetectionEvaluation:
    """The results file scored against the split's ground truth, as given (no forward pass, no post-processing)."""
    dataset = read_ground_truth(raw_dir)
    results = read_results(spec.file, dataset, split)
    document = coco_document(dataset, split)
    # "the model's classes" of a results file: the categories it has detections of
    found = tuple(sorted({r["category_id"] for r in results}))
    as_model = ModelSpec(spec.name, spec.file, PREDICTIONS, "", found, task="detect")
    labels = checked_label_map(as_model, dataset.categories, scoring.categories)
    report = evaluate_detections(scored_document(document, labels, scoring.categories), results,
                                 scoring.count_threshold, scoring.ap)
    names = {image.image_id: image.file_name for image in dataset.images if image.split == split}
    with_detections = {r["image_id"] for r in results}
    empty = int(np.count_nonzero([image_id not in with_detections for image_id in names]))
    return DetectionEvaluation(report, results, names, {}, empty, labels.summary(scoring.categories),
                               labels.metrics())
