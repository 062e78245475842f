"""The evaluate stage: predictions + ground truth from the raw layer (joined by identity, see items.py) → DVC metrics and plots."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from evalstack.config import ModelError, ModelSpec
from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.keys import Key
from evalstack.core.layers import Layer
from evalstack.evaluation.items import Tally, feed
from evalstack.evaluation.metrics import ClassificationReport, classification_report
from evalstack.models.predictions import open_predictions

# The one figure per model that `dvc metrics show` / `dvc exp show` carry (see headline_metrics).
HEADLINE_KEYS = {"classify": ("accuracy",), "concentration": ("rmse",)}


@dataclass(frozen=True)
class EvaluationOutputs:
    metrics: Path  # JSON for `dvc metrics`: the headline only (see headline_metrics)
    pairs: Path  # CSV rows (actual, predicted): DVC's confusion template, or a scatter for concentration
    per_class: Path  # CSV rows (class, accuracy, support)
    details: Path | None = None  # JSON of every summary figure (the report and `evalstack summary` read it)
    model: str = ""
    task: str = "classify"


def headline_metrics(model: str, task: str, metrics: dict) -> dict:
    """{model: {headline key: value}}: what DVC's tables show for one model.

    DVC's tables put every (file, key) in a column of its own, and `dvc exp show` prefixes a
    key that occurs in several files with the file's path. One key per model, named after the
    model, keeps `dvc metrics show`, `dvc metrics diff` and `dvc exp show --only-changed`
    within 160 columns for the demo's five models; every other figure is in the details file.
    """
    keys = HEADLINE_KEYS.get(task, ())
    return {model: {key: metrics.get(key) for key in keys}}


def label_indices(names: list[str], labels: tuple[str, ...], model: str) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(names) - index.keys())
    if unknown:
        raise ModelError(f"model {model}: true classes {unknown} are not in its label list")
    return np.asarray([index[name] for name in names], dtype=np.int64)


def evaluate_classifier(
    raw_dir: Path,
    predictions_dir: Path,
    spec: ModelSpec,
    model_signature: Key,
    pipeline_key: Key,
    split: str,
) -> tuple[ClassificationReport, list[tuple[str, str]], int]:
    """Metrics of one model on `split`, read shard by shard (truth from the raw layer, joined by position
    after the item keys are compared), so memory holds one shard plus two integers per evaluated item."""
    tally = ClassifierTally(spec, open_predictions(predictions_dir, model_signature, pipeline_key, spec.name), split)
    feed(raw_dir, [tally])
    return tally.result()


class ClassifierTally(Tally):
    """One classification model's evaluation; memory holds two integers per evaluated item."""

    raw_columns = ("sample_name", "split")
    columns = ("label",)

    def __init__(self, spec: ModelSpec, layer: Layer, split: str):
        super().__init__(spec, layer, split)
        self.true_parts: list[np.ndarray] = []
        self.predicted_parts: list[np.ndarray] = []

    def add(self, truth: Mapping[str, np.ndarray], derived: Mapping[str, np.ndarray]) -> None:
        chosen = self.chosen(truth)
        names = [str(name) for name in truth["sample_name"][chosen]]
        self.true_parts.append(label_indices(names, self.spec.labels, self.spec.name))
        self.predicted_parts.append(np.asarray(derived["label"])[chosen])

    def result(self) -> tuple[ClassificationReport, list[tuple[str, str]], int]:
        y_true = np.concatenate(self.true_parts) if self.true_parts else np.zeros(0, np.int64)
        if not len(y_true):
            raise self.no_items()
        y_pred = np.concatenate(self.predicted_parts)
        labels = self.spec.labels
        pairs = [(labels[t], labels[p]) for t, p in zip(y_true.tolist(), y_pred.tolist())]
        forward_passes = int(self.layer.index.stats.get("forward_passes", 0))
        return classification_report(y_true, y_pred, labels), pairs, forward_passes

    def write(self, outputs: EvaluationOutputs) -> None:
        write_outputs(*self.result(), outputs)


def write_outputs(
    report: ClassificationReport, pairs: list[tuple[str, str]], forward_passes: int, outputs: EvaluationOutputs
) -> None:
    rows = [(name, f"{report.per_class_accuracy[name]:.6f}", report.support[name]) for name in sorted(report.support)]
    write_evaluation_files(
        outputs, {**report.summary(), "forward_passes": forward_passes}, pairs, [("class", "accuracy", "support"), *rows]
    )


def write_evaluation_files(outputs: EvaluationOutputs, metrics: dict, pairs: list[tuple], per_class: list[tuple]) -> None:
    """The evaluate outputs; `per_class` rows include their header."""
    for path in (outputs.metrics, outputs.pairs, outputs.per_class, outputs.details):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    if outputs.details is not None:
        atomic_write_bytes(outputs.details, (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
        metrics = headline_metrics(outputs.model, outputs.task, metrics)
    atomic_write_bytes(outputs.metrics, (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
    atomic_write_bytes(outputs.pairs, _csv([("actual", "predicted"), *pairs]))
    atomic_write_bytes(outputs.per_class, _csv(per_class))


def _csv(rows: list[tuple]) -> bytes:
    from io import StringIO

    buffer = StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()
