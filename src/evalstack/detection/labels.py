"""Model class indices → dataset categories: the one place a detector's labels meet the data.

Adapters output class indices into the model's label list (`ModelSpec.labels`, from params: a list
of names, a preset `coco80`/`coco91`, or a map {index: category id or name}, see config.py). Here each
index gets the dataset category it scores as:

- a name matches the dataset category of that name (datasets number categories their own way: COCO's
  ids 1–90 have gaps, YOLO datasets count from 0); an id must be one of the dataset's;
- a name or id the dataset lacks is refused naming the index, unless the labels are a preset, whose
  classes a dataset may well not all have (their detections are then not scored, and a note says so);
- a dataset category no index maps to is one the model cannot predict: pycocotools scores it AP 0
  (the issue measured mAP 0.043 → 0.032 on the shapes fixture, silently). That is warned about by name,
  and the metrics say which categories were scored; `evaluate.categories: model` scores only the
  categories the model can predict instead.

Stages check this before any forward pass (infer, grid) and again where they score (evaluate, robustness).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from evalstack.config import ConfigError, ModelSpec

NOT_SCORED = -1  # category id of a model index that is no dataset category: its detections are dropped
CATEGORY_MODES = ("dataset", "model")  # evaluate.categories: every dataset category, or those the model predicts


class CategoryWarning(UserWarning):
    """Dataset categories the model cannot predict: they score AP 0 (or are left out, `categories: model`)."""


@dataclass(frozen=True)
class LabelMap:
    model: str
    category_ids: np.ndarray  # (n_classes,) int64: dataset category id per model index, NOT_SCORED where none
    predictable: tuple[str, ...]  # dataset categories some model index maps to, in dataset order
    lacking: tuple[str, ...]  # dataset categories no model index maps to, in dataset order
    unmatched: tuple[str, ...]  # preset classes that are no dataset category (detections not scored)

    def scored(self, mode: str) -> tuple[str, ...]:
        """The categories in mAP: every dataset category (`dataset`), or those the model can predict (`model`)."""
        return self.predictable + self.lacking if mode == "dataset" else self.predictable

    def warn(self, mode: str) -> None:
        if self.lacking:
            effect = "score AP 0 and lower mAP" if mode == "dataset" else "are left out of mAP (categories: model)"
            warnings.warn(CategoryWarning(
                f"model {self.model} cannot predict dataset categories {list(self.lacking)}: no model class maps to "
                f"them, so they {effect}; map a class to them under models.{self.model}.labels if it should"),
                stacklevel=2)

    def summary(self, mode: str) -> dict[str, Any]:
        """What the details JSON records: which categories were scored and why others were not."""
        return {"mode": mode, "scored": list(self.scored(mode)), "model_lacks": list(self.lacking),
                "model_classes_not_in_dataset": list(self.unmatched)}

    def metrics(self) -> dict[str, Any]:
        """What metrics/<model>.json shows: the categories the model lacks, joined (`dvc metrics show` drops
        lists) and cut short so the row fits a terminal; the full lists are in the details JSON."""
        shown = ", ".join(self.lacking[:2]) + (f", … ({len(self.lacking)})" if len(self.lacking) > 2 else "")
        return {"model_lacks": shown}


def label_map(spec: ModelSpec, categories: Sequence[Mapping[str, Any]]) -> LabelMap:
    """Each model index's dataset category; ConfigError naming the index for a label the dataset lacks."""
    by_name = {str(c["name"]): int(c["id"]) for c in categories}
    names = {int(c["id"]): str(c["name"]) for c in categories}
    ids, unmatched, unknown = [], [], []
    for index, label in enumerate(spec.labels):
        if label is None:
            ids.append(NOT_SCORED)
        elif isinstance(label, int) and not isinstance(label, bool):
            if label not in names:
                unknown.append(f"{index} → category id {label}")
            ids.append(label)
        elif str(label) in by_name:
            ids.append(by_name[str(label)])
        elif spec.label_preset is not None:
            ids.append(NOT_SCORED)
            unmatched.append(str(label))
        else:
            unknown.append(f"{index} → {label!r}")
            ids.append(NOT_SCORED)
    if unknown:
        raise ConfigError(f"model {spec.name}: labels {', '.join(unknown)}: not categories of the dataset "
                          f"({_listing(categories)}); fix models.{spec.name}.labels (a map {{index: category}} "
                          "may leave classes the dataset lacks out)")
    mapped = set(ids)
    predictable = tuple(str(c["name"]) for c in categories if int(c["id"]) in mapped)
    lacking = tuple(str(c["name"]) for c in categories if int(c["id"]) not in mapped)
    unmatched = tuple(name for name in dict.fromkeys(unmatched) if name not in ("__background__", "N/A"))
    return LabelMap(spec.name, np.asarray(ids, dtype=np.int64), predictable, lacking, unmatched)


def checked_label_map(spec: ModelSpec, categories: Sequence[Mapping[str, Any]], mode: str = "dataset") -> LabelMap:
    """`label_map`, warning (CategoryWarning) about categories the model cannot predict."""
    labels = label_map(spec, categories)
    labels.warn(mode)
    return labels


def check_mode(mode: str) -> str:
    if mode not in CATEGORY_MODES:
        raise ConfigError(f"evaluate.categories {mode!r}: choose {' or '.join(CATEGORY_MODES)}")
    return mode


def scored_document(document: dict[str, Any], labels: LabelMap, mode: str) -> dict[str, Any]:
    """The ground truth pycocotools scores: as is (`dataset`), or only the categories the model predicts
    (`model`; pycocotools scores each category on its own, so dropping one changes no other's AP)."""
    if mode == "dataset":
        return document
    keep = {c["id"] for c in document["categories"] if c["name"] in set(labels.predictable)}
    return {**document, "categories": [c for c in document["categories"] if c["id"] in keep],
            "annotations": [a for a in document["annotations"] if a["category_id"] in keep]}


def _listing(categories: Sequence[Mapping[str, Any]], most: int = 12) -> str:
    shown = [f"{c['id']}: {c['name']}" for c in categories[:most]]
    return ", ".join(shown) + (f", … ({len(categories)} in all)" if len(categories) > most else "")
