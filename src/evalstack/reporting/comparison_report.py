"""Writes a Comparison out: Markdown, CSV tables, a PNG plot and DVC plot data."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evalstack.core.atomic import atomic_write_bytes
from evalstack.evaluation.comparison import Comparison

TABLES = ("summary", "mcnemar", "per_class", "concentration_per_class", "parity")


@dataclass(frozen=True)
class ReportOutputs:
    directory: Path  # comparison/: report.md, <table>.csv, comparison.png
    plot_data: Path  # plots/comparison/accuracy.csv for `dvc plots`


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.6g").encode()


def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def markdown(comparison: Comparison, split: str, level: float) -> str:
    sections = [
        f"# Model comparison ({split} split, {comparison.n_items} items paired by item key)\n",
        *(f"> {note}\n" for note in comparison.notes),
        f"## Summary\n\nAccuracy with a {level:.0%} paired bootstrap interval; RMSE/MAE in quantity points; "
        "latency = framework time per item at the infer batch size (measured, machine-dependent).\n",
        markdown_table(comparison.summary),
        "## McNemar tests (classifiers, pairwise)\n\n`only_a_correct`/`only_b_correct` are the discordant "
        "items; exact binomial below 25 of them, χ² with continuity correction above.\n",
        markdown_table(comparison.mcnemar),
        "## Per-class accuracy\n", markdown_table(comparison.per_class),
        "## Concentration RMSE per class\n", markdown_table(comparison.concentration_per_class),
        "## Export parity\n", markdown_table(comparison.parity),
    ]
    return "\n".join(sections)


def plot_png(comparison: Comparison) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    summary = comparison.summary
    accuracy = summary.dropna(subset=["accuracy"])
    rmse = summary.dropna(subset=["rmse"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 0.5 * max(len(accuracy), len(rmse), 2) + 1.5))
    positions = range(len(accuracy))
    errors = [accuracy["accuracy"] - accuracy["accuracy_ci_low"], accuracy["accuracy_ci_high"] - accuracy["accuracy"]]
    left.barh(list(positions), accuracy["accuracy"], xerr=errors, color="#4c72b0", capsize=4)
    left.set_yticks(list(positions), accuracy["model"])
    left.set_xlim(0, 1)
    left.set_xlabel("accuracy (95% bootstrap CI)")
    right.barh(list(range(len(rmse))), rmse["rmse"], color="#dd8452")
    right.set_yticks(list(range(len(rmse))), rmse["model"])
    right.set_xlabel("concentration RMSE")
    figure.suptitle(f"{comparison.n_items} paired items")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def write_report(comparison: Comparison, outputs: ReportOutputs, split: str, level: float) -> None:
    outputs.directory.mkdir(parents=True, exist_ok=True)
    outputs.plot_data.parent.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        atomic_write_bytes(outputs.directory / f"{name}.csv", _csv(getattr(comparison, name)))
    atomic_write_bytes(outputs.directory / "report.md", markdown(comparison, split, level).encode())
    atomic_write_bytes(outputs.directory / "comparison.png", plot_png(comparison))
    accuracy = comparison.summary.dropna(subset=["accuracy"])[["model", "accuracy", "accuracy_ci_low", "accuracy_ci_high"]]
    atomic_write_bytes(outputs.plot_data, _csv(accuracy))
