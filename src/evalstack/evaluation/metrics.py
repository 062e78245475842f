"""Classification metrics over integer label arrays (pure functions, no I/O).

Computed from the confusion matrix with numpy rather than sklearn.metrics: importing
sklearn costs ~1 s, which every evaluate stage paid on every eval-only param change.
tests/test_metrics.py checks both figures against sklearn on random labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassificationReport:
    accuracy: float
    macro_f1: float
    n_items: int
    per_class_accuracy: dict[str, float]
    support: dict[str, int]
    confusion: np.ndarray  # rows: true class, columns: predicted, over `classes`
    classes: tuple[str, ...]

    def summary(self) -> dict[str, float | int]:
        return {"accuracy": round(self.accuracy, 6), "macro_f1": round(self.macro_f1, 6), "n_items": self.n_items}


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...]) -> ClassificationReport:
    """Metrics over the classes that occur in truth or prediction (others would read as 0/0)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise ValueError("no items to evaluate")
    present = np.unique(np.concatenate([y_true, y_pred]))
    matrix = confusion_matrix(y_true, y_pred, present)
    support = matrix.sum(axis=1)
    classes = tuple(labels[i] for i in present)
    per_class = {
        name: float(matrix[row, row] / support[row]) for row, name in enumerate(classes) if support[row] > 0
    }
    return ClassificationReport(
        accuracy=float(np.mean(y_true == y_pred)),
        macro_f1=macro_f1(matrix),
        n_items=int(len(y_true)),
        per_class_accuracy=per_class,
        support={name: int(support[row]) for row, name in enumerate(classes) if support[row] > 0},
        confusion=matrix,
        classes=classes,
    )


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Counts of (true, predicted) over `classes` (sorted), as sklearn.metrics.confusion_matrix(labels=classes)."""
    k = len(classes)
    rows, columns = np.searchsorted(classes, y_true), np.searchsorted(classes, y_pred)
    return np.bincount(rows * k + columns, minlength=k * k).reshape(k, k)


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean of per-class F1 = 2·TP / (2·TP + FP + FN); a class with none of them scores 0
    (sklearn's f1_score(average="macro", zero_division=0))."""
    tp = np.diag(matrix).astype(float)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)
    scores = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(scores.mean()) if len(scores) else 0.0
