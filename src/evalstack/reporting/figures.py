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


def save(figure, out) -> None:
    """To a path or a binary buffer; deterministic bytes (no software tag, no timestamp)."""
    if isinstance(out, Path):
        out.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out, dpi=DPI, metadata=PNG_METADATA, format="png")
    plt.close(figure)


def _png(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    save(figure, buffer)
    return buffer.getvalue()


def _num(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number


def comparison_with_ci(summary: list[dict]) -> bytes:
    """Accuracy with its 95 % CI per classifier (left), RMSE/MAE per concentration model (right): models only."""
    classifiers = [row for row in summary if _num(row.get("accuracy")) is not None]
    regressors = [row for row in summary if _num(row.get("rmse")) is not None]
    panels = [panel for panel in (classifiers, regressors) if panel]
    rows = max((len(panel) for panel in panels), default=1)
    figure, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 1.4 + 0.45 * rows),
                                squeeze=False)
    column = 0
    if classifiers:
        ax = axes[0][column]
        values = [_num(row["accuracy"]) for row in classifiers]
        low = [v - (_num(row.get("accuracy_ci_low")) if _num(row.get("accuracy_ci_low")) is not None else v)
               for v, row in zip(values, classifiers)]
        high = [(_num(row.get("accuracy_ci_high")) if _num(row.get("accuracy_ci_high")) is not None else v) - v
                for v, row in zip(values, classifiers)]
        ax.barh(range(len(values)), values, xerr=[low, high], color="#4c78a8", capsize=4)
        ax.set_yticks(range(len(values)), [row["model"] for row in classifiers])
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_xlabel("accuracy (95 % paired bootstrap CI)")
        ax.set_title("Classifiers")
        column += 1
    if regressors:
        ax = axes[0][column]
        height = 0.4
        positions = list(range(len(regressors)))
        ax.barh([p - height / 2 for p in positions], [_num(r["rmse"]) for r in regressors], height, label="RMSE",
                color="#f58518")
        ax.barh([p + height / 2 for p in positions], [_num(r.get("mae")) or 0 for r in regressors], height, label="MAE",
                color="#e45756")
        ax.set_yticks(positions, [row["model"] for row in regressors])
        ax.invert_yaxis()
        ax.set_xlabel("quantity points (lower is better)")
        ax.legend(fontsize=8)
        ax.set_title("Concentration")
    return _png(figure)


def robustness_overlay(models: dict, kind: str, reference: str | None) -> bytes:
    """Accuracy vs severity for one perturbation type, every model on the same axes; the reference is thick."""
    figure, axes = plt.subplots(figsize=(5.2, 3.6))
    # Each model its own line style and marker: an exported copy gives the same values, and a
    # solid line under a dashed one stays visible where one colour alone would hide it.
    styles = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))
    for number, (name, model) in enumerate(models.items()):
        values = model["types"].get(kind)
        if values is None:
            continue
        severities = [0] + [int(s) for s in values["accuracy"]]
        accuracies = [model["clean_accuracy"], *values["accuracy"].values()]
        is_reference = name == reference
        line, marker = styles[0] if is_reference else styles[number % len(styles)]
        axes.plot(severities, accuracies, linestyle=line, marker=marker, linewidth=3 if is_reference else 1.5,
                  markersize=4, label=f"{name} (reference)" if is_reference else name, zorder=3 if is_reference else 2)
    axes.set_xlabel("severity (0 = clean)")
    axes.set_ylabel("accuracy")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(f"{kind}: accuracy vs severity")
    return _png(figure)


def detection_grid_overlay(grids: dict, kind: str) -> bytes:
    """mAP@[.5:.95] vs severity (0 = clean) for one corruption type, every detector on the same axes."""
    figure, axes = plt.subplots(figsize=(5.2, 3.6))
    for name, grid in grids.items():
        cells = sorted((c["severity"], c["mAP"]) for c in grid["cells"] if c["kind"] == kind)
        if cells:
            axes.plot([0] + [s for s, _ in cells], [grid["P_clean"]] + [m for _, m in cells], "o-", markersize=4,
                      label=name)
    axes.set_xlabel("severity (0 = clean)")
    axes.set_ylabel("mAP@[.5:.95]")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(f"{kind}: mAP vs severity")
    return _png(figure)


def confusion_png(rows: list[dict], title: str) -> bytes:
    figure = _confusion(rows, "predicted", "actual", normalized=False)
    figure.axes[0].set_title(title)
    return _png(figure)


def bars_png(rows: list[dict], value: str, category: str, title: str) -> bytes:
    figure = _bars(rows, value, category, sort=False)
    figure.axes[0].set_title(title)
    return _png(figure)


def scatter_png(rows: list[dict], title: str) -> bytes:
    figure = _lines(rows, "actual", "predicted", points_only=True)
    axes = figure.axes[0]
    values = [float(row[k]) for row in rows for k in ("actual", "predicted") if _num(row[k]) is not None]
    if values:
        low, high = min(values), max(values)
        axes.plot([low, high], [low, high], "--", color="grey", linewidth=1, label="predicted = actual")
        axes.legend(fontsize=8)
    axes.set_title(title)
    return _png(figure)


def pr_overlay(curves: dict[str, list[dict]]) -> bytes:
    figure, axes = plt.subplots(figsize=(5.2, 3.8))
    for name, rows in curves.items():
        axes.plot([float(r["recall"]) for r in rows], [float(r["precision"]) for r in rows], label=name)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title("Precision–recall at IoU 0.5")
    return _png(figure)


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
