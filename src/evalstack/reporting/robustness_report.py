"""The robustness outputs: robustness/metrics.json and per (model, type) plot CSVs.

The figures themselves (CE, relative CE, mCE) are computed in evaluation/robustness_metrics.py;
reports/index.html draws every model per perturbation type on one chart (reporting/report.py).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from evalstack.core.atomic import atomic_write_bytes


def _csv(rows: list[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


def write_outputs(metrics: Mapping[str, Any], metrics_path: Path, plots_dir: Path) -> None:
    """The metrics JSON and per (model, type) CSVs for `dvc plots` (severity 0 = clean)."""
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(metrics_path, (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
    for name, model in metrics["models"].items():
        for kind, values in model["types"].items():
            rows: list[Sequence[Any]] = [("severity", "accuracy", "flip_rate"), (0, model["clean_accuracy"], 0.0)]
            rows += [(int(s), a, values["flip_rate"][s]) for s, a in values["accuracy"].items()]
            (plots_dir / name).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(plots_dir / name / f"{kind}.csv", _csv(rows))
