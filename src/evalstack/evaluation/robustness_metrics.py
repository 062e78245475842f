"""Robustness metrics across models: CE, relative CE, mCE (ImageNet-C), flip rate; plots and report.

With E_{s,c}^f the error of model f under perturbation type c at severity s and
E_clean^f its clean error, against the reference model `ref` named in params:
  CE_c^f = Σ_s E_{s,c}^f / Σ_s E_{s,c}^ref
  relative CE_c^f = Σ_s (E_{s,c}^f − E_clean^f) / Σ_s (E_{s,c}^ref − E_clean^ref)
mCE and relative mCE are their means over types. A zero denominator gives None, and so does a relative CE
whose reference error does not rise under the type (denominator ≤ 0): divided by a fall, or by a rise of
one card in 78, the ratio flips sign or runs to thousands of percent and says nothing about robustness.
Hendrycks & Dietterich's formula assumes the reference degrades; it is kept as is where it does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # the report stage combines summaries without the grid's machinery
    from evalstack.evaluation.robustness import CellResult, GridBuild, GridConfig


def corruption_error(errors: Sequence[float], reference_errors: Sequence[float]) -> float | None:
    denominator = sum(reference_errors)
    return sum(errors) / denominator if denominator else None


def relative_corruption_error(
    errors: Sequence[float], clean_error: float, reference_errors: Sequence[float], reference_clean_error: float
) -> float | None:
    denominator = sum(e - reference_clean_error for e in reference_errors)
    return sum(e - clean_error for e in errors) / denominator if denominator > 0 else None


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
        "n_items": len(build.split_rows),
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
    """robustness/metrics.json: per model accuracy per cell, CE and relative CE per type, mCE.

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
