"""What the corruption grid writes: a few scalars for `dvc metrics`, plot CSVs and a details JSON, from
which `evalstack report` (reporting/report.py) draws mAP per corruption type with every model overlaid
and the tables.

metrics/robustness/<model>.json: mPC, rPC, forward_passes (perturbed), for `dvc metrics show`.
plots/robustness/<model>/<type>.csv: severity (0 = clean), mAP, mAP50, consistency, for `dvc plots`.
reports/robustness/<model>.json: everything (per cell, per type, P_clean, the mAP@.5 variants, counts).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from evalstack.core.atomic import atomic_write_bytes
from evalstack.evaluation.classification import _csv

HEADLINE = ("mPC", "rPC")  # consistency and the rest: the details JSON, the plots, the report


def write_grid_outputs(summary: Mapping[str, Any], metrics: Path, plots_dir: Path, details: Path) -> None:
    for path in (metrics, details):
        path.parent.mkdir(parents=True, exist_ok=True)
    headline = {name: summary[name] for name in HEADLINE}
    headline["forward_passes"] = summary["counts"]["perturbed_forward_passes"]
    atomic_write_bytes(metrics, (json.dumps(headline, indent=2, sort_keys=True) + "\n").encode())
    atomic_write_bytes(details, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("*.csv"):  # a type dropped from the grid leaves no stale curve
        if old.stem not in summary["types"]:
            old.unlink()
    for kind in summary["types"]:
        rows: list[Sequence[Any]] = [("severity", "mAP", "mAP50", "consistency"),
                                     (0, summary["P_clean"], summary["P50_clean"], 1.0)]
        rows += [(c["severity"], c["mAP"], c["mAP50"], "" if c["consistency"] is None else c["consistency"])
                 for c in summary["cells"] if c["kind"] == kind]
        atomic_write_bytes(plots_dir / f"{kind}.csv", _csv(rows))
