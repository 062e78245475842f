"""What the last run produced, per profile and model: the figures the summary and the report show.

Everything here is read from the files the stages wrote (nothing is computed again):
the evaluate details (`data/evaluation/<model>.json`), the paired comparison
(`comparison/*.csv`), the robustness grid (`robustness/metrics.json`) and, when the
detection profile ran, `detection/metrics/<model>.json` with its COCO details
(`detection/reports/coco/`) and corruption grid (`detection/metrics/robustness/`,
`detection/reports/robustness/`). A profile or file that is not
there is left out, so the summary is true whichever profiles a user ran.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalstack.core import yamlload
from evalstack.models.latency import read_latency

CLASSIFICATION = "classification"
DETECTION = "detection"
DETECTION_EXTRA = ("n_images", "mPC", "rPC")  # read beside metrics/<model>.json (reports/coco, metrics/robustness)


@dataclass
class ModelResult:
    name: str
    task: str  # classify | concentration | detect
    figures: dict[str, float | None] = field(default_factory=dict)
    n_items: int | None = None
    reference: bool = False  # the robustness reference model (CE = 100 by definition)


@dataclass
class ProfileResults:
    profile: str  # classification | detection
    root: Path  # the folder holding the profile's dvc.yaml and params.yaml
    params: dict[str, Any]
    models: list[ModelResult]
    split: str
    notes: list[str] = field(default_factory=list)

    def of_task(self, task: str) -> list[ModelResult]:
        return [model for model in self.models if model.task == task]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError:
        return []


def number(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if result != result else result  # NaN → None


def _params(path: Path) -> dict[str, Any] | None:
    try:
        return yamlload.safe_load(path.read_text()) or {}
    except OSError:
        return None


def classification_results(root: Path) -> ProfileResults | None:
    """The classification profile (root dvc.yaml), or None when it has not produced anything."""
    params = _params(root / "params.yaml")
    if params is None or not (root / "dvc.yaml").is_file():
        return None
    declared = params.get("models") or {}
    compared = {row["model"]: row for row in read_csv(root / "comparison/summary.csv")}
    robustness = read_json(root / "robustness/metrics.json") or {}
    reference = robustness.get("reference") or (params.get("robustness") or {}).get("reference")
    models = []
    for name, entry in declared.items():
        details = read_json(root / "data/evaluation" / f"{name}.json")
        if details is None:
            continue  # not evaluated yet
        task = str(entry.get("task", "classify"))
        figures = {key: number(value) for key, value in details.items()}
        row = compared.get(name, {})
        for key in ("accuracy_ci_low", "accuracy_ci_high"):
            figures[key] = number(row.get(key))
        # measured by infer on this machine (not part of any cached comparison)
        figures["latency_ms_per_item"] = number((read_latency(root / "data/latency" / f"{name}.json") or {})
                                                .get("ms_per_item"))
        if row and number(row.get("accuracy")) is not None:
            figures["paired_accuracy"] = number(row["accuracy"])
            figures["paired_n_items"] = number(row.get("n_items"))
        grid = (robustness.get("models") or {}).get(name) or {}
        for key in ("mce", "relative_mce", "clean_accuracy"):
            figures[key] = number(grid.get(key))
        models.append(ModelResult(name, task, figures, int(details.get("n_items") or 0) or None, name == reference))
    if not models:
        return None
    split = str((params.get("evaluate") or {}).get("split", "test"))
    return ProfileResults(CLASSIFICATION, root, params, models, split)


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return flat


def detection_results(root: Path) -> ProfileResults | None:
    """The detection profile (detection/dvc.yaml), or None when it has not run."""
    folder = root / DETECTION
    params = _params(folder / "params.yaml")
    if params is None:
        return None
    models = []
    for name in params.get("models") or {}:
        metrics = read_json(folder / "metrics" / f"{name}.json")
        if metrics is None:
            continue
        flat = {key.split(".")[-1]: value for key, value in _flat(metrics).items()}
        # the COCO details (n_images, …) and the corruption grid's headline (mPC, rPC), when written
        for extra in (folder / "reports/coco" / f"{name}.json", folder / "metrics/robustness" / f"{name}.json"):
            flat.update({key: value for key, value in (read_json(extra) or {}).items() if key in DETECTION_EXTRA})
        figures = {key: number(flat.get(key)) for key in ("mAP", "mAP50", "mPC", "rPC", "AR100")}
        models.append(ModelResult(name, "detect", figures, int(number(flat.get("n_images")) or 0) or None))
    if not models:
        return None
    split = str((params.get("evaluate") or {}).get("split", "val"))
    return ProfileResults(DETECTION, folder, params, models, split)


def project_results(root: Path) -> list[ProfileResults]:
    """Every profile that has results in this project, classification first."""
    return [found for found in (classification_results(root), detection_results(root)) if found is not None]
