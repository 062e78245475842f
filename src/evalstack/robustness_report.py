"""Robustness metrics across models: CE, relative CE, mCE (ImageNet-C), flip rate; plots and report.

With E_{s,c}^f the error of model f under perturbation type c at severity s and
E_clean^f its clean error, against the reference model `ref` named in params:
  CE_c^f = Σ_s E_{s,c}^f / Σ_s E_{s,c}^ref
  relative CE_c^f = Σ_s (E_{s,c}^f − E_clean^f) / Σ_s (E_{s,c}^ref − E_clean^ref)
mCE and relative mCE are their means over types. A zero denominator gives None.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from evalstack.robustness import CellResult, GridBuild, GridConfig
from evalstack.store import atomic_write_bytes


def corruption_error(errors: Sequence[float], reference_errors: Sequence[float]) -> float | None:
    denominator = sum(reference_errors)
    return sum(errors) / denominator if denominator else None


def relative_corruption_error(
    errors: Sequence[float], clean_error: float, reference_errors: Sequence[float], reference_clean_error: float
) -> float | None:
    denominator = sum(e - reference_clean_error for e in reference_errors)
    return sum(e - clean_error for e in errors) / denominator if denominator else None


def _mean(values: Sequence[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def model_summary(build: GridBuild, clean_accuracy: float, results: list[CellResult], config: GridConfig,
                  upstream: Mapping[str, int]) -> dict[str, Any]:
    """What the grid stage records per model: cell metrics and the passes the grid took.

    Only totals that follow from the inputs go here (an output must not depend on what
    an earlier run left in the store); what one run computed or reused is in the store's
    build record of each cell (`evalstack why data/robustness/<model>/<cell>`)."""
    return {
        "model": build.model,
        "split": config.split,
        "seed": config.seed,
        "n_items": len(build.split_keys),
        "clean": {"accuracy": clean_accuracy, "error": 1.0 - clean_accuracy},
        "cells": [{"type": r.kind, "severity": r.severity, "accuracy": r.accuracy, "error": r.error,
                   "flip_rate": r.flip_rate} for r in results],
        "counts": {
            "cells": len(build.cells),
            "perturbed_forward_passes": sum(b.index.stats["forward_passes"] for b in build.cells.values()),
            "clean_forward_passes": 0,  # clean predictions are read from the infer stage's layer
            "items_preprocessed": 0,  # perturbations start from the preprocessed layer
            **upstream,
        },
    }


def combine(summaries: Mapping[str, Mapping[str, Any]], reference: str) -> dict[str, Any]:
    """metrics/robustness.json: per model accuracy per cell, CE and relative CE per type, mCE.

    Without the reference model's grid (e.g. it was removed from params) there is nothing to
    normalise by: accuracy and flip rate are still reported, CE values are None, and the
    output says why instead of failing the pipeline.
    """
    ref = summaries.get(reference)
    out: dict[str, Any] = {"reference": reference, "models": {}}
    if ref is None:
        out["note"] = f"robustness.reference {reference!r} has no grid among {sorted(summaries)}: CE not computed"
    for name, summary in sorted(summaries.items()):
        per_type: dict[str, Any] = {}
        for kind in dict.fromkeys(c["type"] for c in summary["cells"]):
            errors = _errors(summary, kind)
            ref_errors = _errors(ref, kind, [s for s, _ in errors]) if ref is not None else None
            mine = [e for _, e in errors]
            per_type[kind] = {
                "accuracy": {str(s): round(1 - e, 6) for s, e in errors},
                "flip_rate": {str(c["severity"]): round(c["flip_rate"], 6) for c in summary["cells"] if c["type"] == kind},
                "ce": _round(corruption_error(mine, ref_errors)) if ref is not None else None,
                "relative_ce": _round(relative_corruption_error(mine, summary["clean"]["error"], ref_errors,
                                                                ref["clean"]["error"])) if ref is not None else None,
            }
        out["models"][name] = {
            "clean_accuracy": round(summary["clean"]["accuracy"], 6),
            "n_items": summary["n_items"],
            "mce": _round(_mean([t["ce"] for t in per_type.values()])),
            "relative_mce": _round(_mean([t["relative_ce"] for t in per_type.values()])),
            "types": per_type,
            "counts": summary["counts"],
        }
    return out


def _errors(summary: Mapping[str, Any], kind: str, severities: list[int] | None = None) -> list[tuple[int, float]]:
    cells = {c["severity"]: c["error"] for c in summary["cells"] if c["type"] == kind}
    if severities is None:
        return sorted(cells.items())
    missing = [s for s in severities if s not in cells]
    if missing:
        raise ValueError(f"model {summary['model']} has no {kind} cells at severities {missing}")
    return [cells[s] for s in severities]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _csv(rows: list[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


def write_outputs(metrics: Mapping[str, Any], metrics_path: Path, plots_dir: Path, report_path: Path,
                  png_path: Path) -> None:
    """metrics JSON, per (model, type) CSVs for `dvc plots` (severity 0 = clean), a PNG and report.md."""
    for path in (metrics_path, report_path, png_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(metrics_path, (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
    for name, model in metrics["models"].items():
        for kind, values in model["types"].items():
            rows: list[Sequence[Any]] = [("severity", "accuracy", "flip_rate"), (0, model["clean_accuracy"], 0.0)]
            rows += [(int(s), a, values["flip_rate"][s]) for s, a in values["accuracy"].items()]
            (plots_dir / name).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(plots_dir / name / f"{kind}.csv", _csv(rows))
    _write_png(metrics, png_path)
    atomic_write_bytes(report_path, render_report(metrics).encode())


def _write_png(metrics: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(k for m in metrics["models"].values() for k in m["types"]))
    figure, axes = plt.subplots(2, len(kinds), figsize=(3.2 * len(kinds), 6), squeeze=False, sharey="row")
    for column, kind in enumerate(kinds):
        for name, model in metrics["models"].items():
            values = model["types"].get(kind)
            if values is None:
                continue
            severities = [0] + [int(s) for s in values["accuracy"]]
            axes[0][column].plot(severities, [model["clean_accuracy"], *values["accuracy"].values()], "o-", label=name)
            axes[1][column].plot(severities, [0.0, *values["flip_rate"].values()], "o-", label=name)
        axes[0][column].set_title(kind)
        axes[1][column].set_xlabel("severity (0 = clean)")
    axes[0][0].set_ylabel("accuracy")
    axes[1][0].set_ylabel("flip rate vs clean")
    axes[0][0].legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _fmt(value: float | None, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.1f}"


def render_report(metrics: Mapping[str, Any]) -> str:
    lines = ["# Robustness under perturbations", "",
             f"Reference model for CE: **{metrics['reference']}** (CE = 100 for it by definition).", ""]
    for name, model in metrics["models"].items():
        kinds = model["types"]
        severities = list(next(iter(kinds.values()))["accuracy"])
        lines += [f"## {name}", "",
                  f"Clean accuracy {model['clean_accuracy']:.3f} on {model['n_items']} items; "
                  f"mCE {_fmt(model['mce'], 100)}, relative mCE {_fmt(model['relative_mce'], 100)}.", "",
                  "| type | clean | " + " | ".join(f"s{s}" for s in severities) + " | CE | rel. CE | flip rate (top severity) |",
                  "|---" * (len(severities) + 5) + "|"]
        for kind, values in kinds.items():
            accuracies = " | ".join(f"{values['accuracy'].get(s, float('nan')):.3f}" for s in severities)
            flip = values["flip_rate"].get(severities[-1])
            lines.append(f"| {kind} | {model['clean_accuracy']:.3f} | {accuracies} | {_fmt(values['ce'], 100)} | "
                         f"{_fmt(values['relative_ce'], 100)} | {flip:.3f} |")
        lines.append("")
    lines += ["## Forward passes and preprocessing behind these figures", "",
              "| model | cells | perturbed forward passes | clean forward passes (grid) | items preprocessed (grid) | "
              "clean predictions read | clean forward passes (infer, all splits, once) | "
              "items preprocessed (preprocess, once) |", "|---" * 8 + "|"]
    for name, model in metrics["models"].items():
        c = model["counts"]
        lines.append(f"| {name} | {c['cells']} | {c['perturbed_forward_passes']} | {c['clean_forward_passes']} | "
                     f"{c['items_preprocessed']} | {c['clean_predictions_read']} | {c['upstream_clean_predictions']} | "
                     f"{c['upstream_items_preprocessed']} |")
    lines += ["", "What one run computed or took from the shard store: `evalstack why data/robustness/<model>/<cell>`."]
    return "\n".join(lines) + "\n"
