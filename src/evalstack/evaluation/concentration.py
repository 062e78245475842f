"""Task `concentration`: what a model says the drug quantity (%) is, and how far off it is.

A concentration model's outputs are read according to its contract:
- a PLS model (contract lists `drugs`): one output per drug; the card's drug picks it;
- one output (labels: [quantity]): a regressor, the output is the quantity;
- several outputs with numeric labels (0, 20, 50, 80, 100): a classifier over
  quantity levels, as PAD's concentration networks are; the argmax label is the quantity.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from evalstack.config import ModelError, ModelSpec, drug_key
from evalstack.core.keys import Key
from evalstack.core.layers import Layer
from evalstack.evaluation.classification import EvaluationOutputs, write_evaluation_files
from evalstack.evaluation.items import Tally, feed
from evalstack.models.predictions import open_predictions


@dataclass(frozen=True)
class ConcentrationReport:
    rmse: float | None  # None when no item could be scored
    mae: float | None
    n_items: int  # items with a prediction
    n_unscored: int  # items whose drug a per-drug model has no coefficients for
    per_class: dict[str, tuple[float, float, int]]  # drug → (rmse, mae, support)

    def summary(self) -> dict[str, float | int | None]:
        rounded = {name: None if value is None else round(value, 6) for name, value in
                   (("rmse", self.rmse), ("mae", self.mae))}
        return {**rounded, "n_items": self.n_items, "n_unscored": self.n_unscored}


def predicted_quantities(logits: np.ndarray, model_parts: Mapping[str, Any], drugs: Sequence[str]) -> np.ndarray:
    """Quantity per item (float64); NaN where a per-drug model has no row for the item's drug."""
    labels = list(model_parts["labels"])
    if "drugs" in model_parts:
        column = {drug_key(name): i for i, name in enumerate(model_parts["drugs"])}
        index = np.asarray([column.get(drug_key(name), -1) for name in drugs])
        values = logits[np.arange(len(logits)), np.maximum(index, 0)].astype(np.float64)
        return np.where(index >= 0, values, np.nan)
    if len(labels) == 1:
        return logits[:, 0].astype(np.float64)
    try:
        levels = np.asarray([float(label) for label in labels])
    except ValueError:
        raise ModelError(
            f"concentration model labels {labels[:4]}… are not quantities; use numeric labels "
            "(e.g. [0, 20, 50, 80, 100]), a single output, or a PLS coefficient file"
        ) from None
    return levels[np.argmax(logits, axis=1)]


def _errors(actual: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    difference = predicted - actual
    return float(np.sqrt(np.mean(difference**2))), float(np.mean(np.abs(difference)))


def concentration_report(actual: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> ConcentrationReport:
    """RMSE and MAE overall and per class (drug), over the items that have a prediction."""
    actual, predicted, classes = np.asarray(actual, float), np.asarray(predicted, float), np.asarray(classes)
    if not len(actual):
        raise ValueError("no items to evaluate")
    scored = ~np.isnan(predicted)
    if not scored.any():  # e.g. a PLS file with no row for any drug in this split
        return ConcentrationReport(None, None, 0, len(scored), {})
    actual, predicted, classes = actual[scored], predicted[scored], classes[scored]
    per_class = {}
    for name in sorted(set(classes.tolist())):
        mask = classes == name
        per_class[name] = (*_errors(actual[mask], predicted[mask]), int(mask.sum()))
    rmse, mae = _errors(actual, predicted)
    return ConcentrationReport(rmse, mae, len(actual), int(len(scored) - len(actual)), per_class)


def evaluate_concentration(
    raw_dir: Path, predictions_dir: Path, spec: ModelSpec, model_signature: Key, pipeline_key: Key, split: str
) -> tuple[ConcentrationReport, list[tuple[float, float]], int]:
    tally = ConcentrationTally(spec, open_predictions(predictions_dir, model_signature, pipeline_key, spec.name), split)
    feed(raw_dir, [tally])
    return tally.result()


class ConcentrationTally(Tally):
    """One concentration model's evaluation; memory holds the chosen items' drug, quantity and outputs, not the
    raw layer's other items."""

    raw_columns = ("sample_name", "quantity", "split")
    columns = ("logits",)

    def __init__(self, spec: ModelSpec, layer: Layer, split: str):
        super().__init__(spec, layer, split)
        self.drugs: list[np.ndarray] = []
        self.actual: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []

    def add(self, truth: Mapping[str, np.ndarray], derived: Mapping[str, np.ndarray]) -> None:
        chosen = np.flatnonzero(self.chosen(truth))
        self.drugs.append(np.asarray([str(value) for value in truth["sample_name"]], dtype=object)[chosen])
        self.actual.append(np.asarray(truth["quantity"], dtype=np.int64)[chosen])
        self.logits.append(np.asarray(derived["logits"])[chosen])

    def result(self) -> tuple[ConcentrationReport, list[tuple[float, float]], int]:
        if not sum(len(part) for part in self.actual):
            raise self.no_items()
        drugs = np.concatenate(self.drugs)
        predicted = predicted_quantities(np.concatenate(self.logits), self.layer.key.parts["model"], drugs)
        actual = np.concatenate(self.actual).astype(float)
        report = concentration_report(actual, predicted, drugs)
        pairs = [(a, round(float(p), 4)) for a, p in zip(actual.tolist(), predicted) if not np.isnan(p)]
        return report, pairs, int(self.layer.index.stats.get("forward_passes", 0))

    def write(self, outputs: EvaluationOutputs) -> None:
        write_concentration_outputs(*self.result(), outputs)


def write_concentration_outputs(
    report: ConcentrationReport, pairs: list[tuple[float, float]], forward_passes: int, outputs: EvaluationOutputs
) -> None:
    rows = [(name, f"{rmse:.6f}", f"{mae:.6f}", n) for name, (rmse, mae, n) in sorted(report.per_class.items())]
    write_evaluation_files(
        outputs, {**report.summary(), "forward_passes": forward_passes}, pairs, [("class", "rmse", "mae", "support"), *rows]
    )
