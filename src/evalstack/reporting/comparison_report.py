"""Writes a Comparison out: CSV tables (reports/index.html renders them) and DVC plot data."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evalstack.core.atomic import atomic_write_bytes
from evalstack.evaluation.comparison import Comparison

TABLES = ("summary", "mcnemar", "per_class", "concentration_per_class", "parity")


@dataclass(frozen=True)
class ReportOutputs:
    directory: Path  # comparison/: <table>.csv
    plot_data: Path  # plots/comparison/accuracy.csv for `dvc plots`


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.6g").encode()


def write_report(comparison: Comparison, outputs: ReportOutputs, split: str, level: float) -> None:
    outputs.directory.mkdir(parents=True, exist_ok=True)
    outputs.plot_data.parent.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        atomic_write_bytes(outputs.directory / f"{name}.csv", _csv(getattr(comparison, name)))
    # What the pairing left out (models that scored different items, …): the report shows these lines.
    atomic_write_bytes(outputs.directory / "notes.txt", "".join(f"{note}\n" for note in comparison.notes).encode())
    accuracy = comparison.summary.dropna(subset=["accuracy"])[["model", "accuracy", "accuracy_ci_low", "accuracy_ci_high"]]
    atomic_write_bytes(outputs.plot_data, _csv(accuracy))
