"""What the corruption grid reports: a few scalars for `dvc metrics`, plot CSVs, a details JSON,
and the report's section — a table per model and mAP curves per corruption type, every model overlaid.

metrics/robustness/<model>.json: mPC, rPC, forward_passes (perturbed), for `dvc metrics show`.
plots/robustness/<model>/<type>.csv: severity (0 = clean), mAP, mAP50, consistency, for `dvc plots`.
reports/robustness/<model>.json: everything (per cell, per type, P_clean, the mAP@.5 variants, counts).
"""
from __future__ import annotations

import io
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


def load_summaries(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(Path(directory).glob("*.json"))]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_section(summaries: Sequence[Mapping[str, Any]], figure: str | None) -> list[str]:
    """Markdown lines: what the grid is, the overlaid curves, one table per model, the pass counts."""
    if not summaries:
        return []
    first = summaries[0]
    lines = ["## Robustness under corruptions (COCO-C protocol)", "",
             f"ImageNet-C corruptions applied to the original {first['split']} images before letterboxing, "
             "ground truth unchanged. P_clean = clean mAP@[.5:.95], mPC = mean mAP over every type and severity, "
             "rPC = mPC / P_clean; consistency = share of clean detections (score ≥ evaluate.count_threshold) still "
             "found under corruption (same label, IoU ≥ 0.5).", ""]
    if figure:
        lines += [f"![mAP per corruption type, every model]({figure})", ""]
    lines += ["| model | P_clean | mPC | rPC | P_clean@.5 | mPC@.5 | rPC@.5 | consistency |", "|---" * 8 + "|"]
    for s in summaries:
        lines.append(f"| {s['model']} | {_fmt(s['P_clean'])} | {_fmt(s['mPC'])} | {_fmt(s['rPC'])} | "
                     f"{_fmt(s['P50_clean'])} | {_fmt(s['mPC50'])} | {_fmt(s['rPC50'])} | {_fmt(s['consistency'])} |")
    lines.append("")
    for s in summaries:
        severities = sorted({c["severity"] for c in s["cells"]})
        lines += [f"### {s['model']}: mAP per type and severity", "",
                  "| type | " + " | ".join(f"s{v}" for v in severities) + " | mean | mean@.5 | consistency |",
                  "|---" * (len(severities) + 4) + "|"]
        for kind, means in s["types"].items():
            by_severity = {c["severity"]: c["mAP"] for c in s["cells"] if c["kind"] == kind}
            lines.append(f"| {kind} | " + " | ".join(_fmt(by_severity.get(v)) for v in severities)
                         + f" | {_fmt(means['mAP'])} | {_fmt(means['mAP50'])} | {_fmt(means['consistency'])} |")
        lines.append("")
    lines += ["### Forward passes behind these figures", "",
              "| model | images (N) | cells (P·I) | clean passes (infer, once) | perturbed passes (N·P·I) |",
              "|---" * 5 + "|"]
    for s in summaries:
        c = s["counts"]
        lines.append(f"| {s['model']} | {s['n_images']} | {c['cells']} | {c['clean_forward_passes']} | "
                     f"{c['perturbed_forward_passes']} |")
    lines += ["", "What a run computed or took from the shard store: "
              "`evalstack why data/grid/<model>/<type>-<severity>`.",
              ""]
    return lines


def write_figure(summaries: Sequence[Mapping[str, Any]], out: Path) -> None:
    """mAP against severity (0 = clean), one panel per corruption type, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(kind for s in summaries for kind in s["types"]))
    columns = min(len(kinds), 4)
    rows = -(-len(kinds) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False, sharey=True)
    for index, kind in enumerate(kinds):
        axis = axes[index // columns][index % columns]
        for s in summaries:
            cells = sorted((c["severity"], c["mAP"]) for c in s["cells"] if c["kind"] == kind)
            if cells:
                axis.plot([0] + [v for v, _ in cells], [s["P_clean"]] + [m for _, m in cells], "o-", label=s["model"])
        axis.set_title(kind)
        axis.set_xlabel("severity (0 = clean)")
    for index in range(len(kinds), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    for row in axes:
        row[0].set_ylabel("mAP@[.5:.95]")
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    plt.close(figure)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
