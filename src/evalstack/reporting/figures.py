"""PNG figures of DVC plot files with matplotlib (Agg), for reports a person reads offline.

Each DVC plot template maps to one drawing: `confusion*` → heatmap of (y=actual,
x=predicted) pair counts, `bar_horizontal*` → horizontal bars, the line templates →
lines, `scatter*` → points. PNGs are written without a software tag and without a
timestamp, so identical data gives identical bytes and DVC sees no change.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

PNG_METADATA = {"Software": None}
DPI = 100


@dataclass(frozen=True)
class PlotSpec:
    """One chart as dvc.yaml declares it (the subset of properties a static figure needs)."""

    title: str
    template: str = "linear"
    x: str | None = None  # None: the row number, like DVC's `step`
    y: str | None = None  # None: the last column


class PlotDataError(ValueError):
    pass


def load_rows(path: Path) -> list[dict]:
    """Rows of a DVC plot file: CSV, TSV, or JSON (a list of records, or an object holding one)."""
    if path.suffix in {".csv", ".tsv"}:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ","))
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            data = next((value for value in data.values() if isinstance(value, list)), None)
        if isinstance(data, list) and all(isinstance(row, dict) for row in data):
            return data
    raise PlotDataError(f"{path}: not a plot file this report can read (CSV, TSV or JSON records)")


def render_plot(spec: PlotSpec, rows: list[dict], out: Path, source: str) -> None:
    if not rows:
        raise PlotDataError(f"{source}: no rows to plot")
    y = spec.y or list(rows[0])[-1]
    missing = [field for field in (spec.x, y) if field and field not in rows[0]]
    if missing:
        raise PlotDataError(f"{source}: fields {missing} declared in dvc.yaml are not in the file")
    if spec.template.startswith("confusion"):
        figure = _confusion(rows, spec.x or "predicted", y, normalized=spec.template.endswith("normalized"))
    elif spec.template.startswith("bar_horizontal"):
        figure = _bars(rows, spec.x or y, y, sort=spec.template.endswith("sorted"))
    else:
        figure = _lines(rows, spec.x, y, points_only=spec.template.startswith("scatter"))
    figure.axes[0].set_title(spec.title)
    save(figure, out)


def comparison_figure(table: dict[str, dict[str, float]], metrics: list[str], out: Path) -> None:
    """Grouped horizontal bars: one group per model, one bar per metric."""
    models = sorted(table)
    figure, axes = plt.subplots(figsize=(7, 1.2 + 0.5 * len(models) * max(1, len(metrics))))
    height = 0.8 / max(1, len(metrics))
    for offset, metric in enumerate(metrics):
        values = [table[model].get(metric, float("nan")) for model in models]
        positions = [row + offset * height for row in range(len(models))]
        bars = axes.barh(positions, values, height=height, label=metric)
        axes.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
    axes.set_yticks([row + height * (len(metrics) - 1) / 2 for row in range(len(models))], models)
    _fraction_axis(axes, [table[model][metric] for model in models for metric in metrics if metric in table[model]])
    axes.invert_yaxis()
    axes.set_xlabel("score")
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("Model comparison")
    save(figure, out)


def save(figure, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out, dpi=DPI, metadata=PNG_METADATA)
    plt.close(figure)


def _confusion(rows: list[dict], x: str, y: str, normalized: bool):
    counts = Counter((str(row[y]), str(row[x])) for row in rows)
    classes = sorted({name for pair in counts for name in pair})
    index = {name: i for i, name in enumerate(classes)}
    matrix = [[0.0] * len(classes) for _ in classes]
    for (actual, predicted), count in counts.items():
        matrix[index[actual]][index[predicted]] = count
    if normalized:
        matrix = [[value / (sum(row) or 1) for value in row] for row in matrix]
    size = 2.5 + 0.35 * len(classes)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_xticks(range(len(classes)), classes, rotation=90, fontsize=8)
    axes.set_yticks(range(len(classes)), classes, fontsize=8)
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    if len(classes) <= 25:
        peak = max((max(row) for row in matrix), default=0) or 1
        for r, row in enumerate(matrix):
            for c, value in enumerate(row):
                if value:
                    text = f"{value:.2f}" if normalized else f"{value:.0f}"
                    colour = "white" if value > peak / 2 else "black"
                    axes.text(c, r, text, ha="center", va="center", fontsize=7, color=colour)
    return figure


def _bars(rows: list[dict], value: str, category: str, sort: bool):
    pairs = [(str(row[category]), float(row[value])) for row in rows]
    if sort:
        pairs.sort(key=lambda pair: pair[1])
    figure, axes = plt.subplots(figsize=(7, 1.2 + 0.28 * len(pairs)))
    axes.barh([name for name, _ in pairs], [number for _, number in pairs], color="#4c78a8")
    _fraction_axis(axes, [number for _, number in pairs])
    axes.invert_yaxis()
    axes.set_xlabel(value)
    axes.tick_params(axis="y", labelsize=8)
    return figure


def _lines(rows: list[dict], x: str | None, y: str, points_only: bool):
    xs = [_number_or_text(row[x]) for row in rows] if x else list(range(len(rows)))
    ys = [float(row[y]) for row in rows]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(xs, ys, "o" if points_only else "o-", markersize=4)
    axes.set_xlabel(x or "step")
    axes.set_ylabel(y)
    axes.grid(alpha=0.3)
    return figure


def _fraction_axis(axes, values: list[float]) -> None:
    """Scores in [0, 1] get the full 0–1 axis, so a bar's length reads as a fraction (room for labels)."""
    if values and all(0 <= value <= 1 for value in values):
        axes.set_xlim(0, 1.12)


def _number_or_text(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
