"""The evaluation report: every metric and plot that dvc.yaml declares, in one markdown page.

The report reads the top-level `metrics:` and `plots:` sections of dvc.yaml instead of a
list of its own, so a plot added there (a new model's confusion matrix, robustness
curves, a comparison table) appears in `dvc plots show` and in the report alike.
It writes `report.md`, `models.csv` (one row per model, the comparison table) and
`figures/*.png` into its output directory.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evalstack.core.atomic import atomic_write_bytes
from evalstack.reporting.figures import PlotDataError, PlotSpec, comparison_figure, load_rows, render_plot

PLOT_SUFFIXES = {".csv", ".tsv", ".json"}
METRIC_SUFFIXES = {".json", ".yaml", ".yml"}


@dataclass(frozen=True)
class PlotFile:
    path: Path  # relative to the repo root
    spec: PlotSpec


@dataclass(frozen=True)
class PlotGroup:
    """One entry of dvc.yaml `plots:`; a directory entry holds one file per model."""

    heading: str
    files: list[PlotFile]
    missing: list[Path] = field(default_factory=list)


def declared_plots(dvc_yaml: dict, root: Path) -> list[PlotGroup]:
    groups = []
    for entry in dvc_yaml.get("plots") or []:
        name, props = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        props = props or {}
        files = _plot_files(root, name, props.get("title") or name, props)
        present = [plot for plot in files if (root / plot.path).is_file()]
        missing = sorted({plot.path for plot in files if not (root / plot.path).is_file()})
        groups.append(PlotGroup(props.get("title") or name, present, missing))
    return groups


def _plot_files(root: Path, name: str, title: str, props: dict) -> list[PlotFile]:
    template, x, y = props.get("template", "linear"), props.get("x"), props.get("y")
    if isinstance(y, dict):  # the id is a name; y maps file → field or [fields]: a chart per file and field
        x_of = x.get if isinstance(x, dict) else lambda path: x
        return [
            PlotFile(Path(path), PlotSpec(f"{title}: {path}", template, x_of(path), column))
            for path, columns in y.items()
            for column in ([columns] if isinstance(columns, str) else columns)
        ]
    paths = _expand(root, Path(name), PLOT_SUFFIXES)  # the id is a file, or a directory of one file per model
    return [
        PlotFile(path, PlotSpec(f"{title}: {path.stem}" if len(paths) > 1 else title, template, x, column))
        for path in paths
        for column in (y if isinstance(y, list) else [y])
    ]


def declared_metrics(dvc_yaml: dict, root: Path) -> dict[str, dict[str, float]]:
    """row name (file stem, e.g. the model) → flat numeric metrics."""
    table: dict[str, dict[str, float]] = {}
    for entry in dvc_yaml.get("metrics") or []:
        for path in _expand(root, Path(entry), METRIC_SUFFIXES):
            data = yaml.safe_load((root / path).read_text())  # JSON is YAML
            base = Path(entry) if (root / entry).is_dir() else path.parent
            name = path.relative_to(base).with_suffix("").as_posix()
            table[name] = _flatten_numbers(data)
    return table


def write_report(root: Path, out_dir: Path, compare: list[str], sections: list[str] | None = None) -> Path:
    """Render every declared metric and plot into out_dir, then any extra markdown `sections` lines
    (a profile's own tables, e.g. the detection grid's); returns the report path."""
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text())
    out = root / out_dir
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    table = declared_metrics(dvc_yaml, root)
    columns = [name for name in compare if any(name in row for row in table.values())]
    columns += sorted({name for row in table.values() for name in row} - set(columns))
    intro = "Every metric and plot declared in dvc.yaml (`dvc repro report` rebuilds it)."
    lines = ["# Evaluation report", "", intro, ""]
    lines += ["## Metrics", "", *_markdown_table(table, columns), ""]
    atomic_write_bytes(out / "models.csv", _csv_table(table, columns))
    compared = [name for name in compare if name in columns]
    if compared:
        comparison_figure(table, compared, figures / "model_comparison.png")
        lines += ["## Model comparison", "", "![Model comparison](figures/model_comparison.png)", ""]
    used_names: set[str] = set()
    for group in declared_plots(dvc_yaml, root):
        drawn = [plot for plot in group.files if not _is_under(plot.path, out_dir)]  # ours are above
        if not drawn and not group.missing:
            continue
        lines += [f"## {group.heading}", ""]
        for plot in drawn:
            image = f"figures/{_figure_name(plot, used_names)}.png"
            try:
                render_plot(plot.spec, load_rows(root / plot.path), out / image, str(plot.path))
            except (PlotDataError, ValueError) as error:
                lines += [f"- `{plot.path}`: not drawn ({error})", ""]
                continue
            lines += [f"### {plot.path.stem}", "", f"![{group.heading}: {plot.path}]({image})", ""]
        if group.missing:
            lines += [f"- `{path}`: declared, not produced yet" for path in group.missing] + [""]
    lines += sections or []
    report = out / "report.md"
    atomic_write_bytes(report, "\n".join(lines).encode())
    return report


def _expand(root: Path, path: Path, suffixes: set[str]) -> list[Path]:
    """A declared path → the files it covers, relative to root, in a stable order."""
    if (root / path).is_dir():
        return sorted(p.relative_to(root) for p in (root / path).rglob("*") if p.is_file() and p.suffix in suffixes)
    return [path]


def _flatten_numbers(data, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            flat.update(_flatten_numbers(value, f"{prefix}{key}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        flat[prefix.rstrip(".")] = data
    return flat


def _markdown_table(table: dict[str, dict[str, float]], columns: list[str]) -> list[str]:
    if not table:
        return ["No metrics files found (declared under `metrics:` in dvc.yaml)."]
    rows = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in sorted(table):
        rows.append(f"| {name} | " + " | ".join(_format(table[name].get(column)) for column in columns) + " |")
    return rows


def _csv_table(table: dict[str, dict[str, float]], columns: list[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", *columns])
    for name in sorted(table):
        writer.writerow([name, *(table[name].get(column, "") for column in columns)])
    return buffer.getvalue().encode()


def _format(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _figure_name(plot: PlotFile, used: set[str]) -> str:
    """A file name from the plot's path; the field is added when one file gives several charts."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", plot.path.with_suffix("").as_posix()).strip("_")
    if name in used:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}-{plot.spec.y}")
    used.add(name)
    return name


def _is_under(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents
