"""The robustness report: metrics/robustness.json, per (model, type) plot CSVs, a PNG and report.md.

The figures themselves (CE, relative CE, mCE) are computed in evaluation/robustness_metrics.py.
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
