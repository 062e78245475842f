"""The one report: reports/index.html (offline, figures inline) and its Markdown twin reports/index.md.

`evalstack report` writes it after `dvc repro` (`make repro` does). It is not a DVC stage on
purpose: its provenance section says what the *last run on this machine* computed and reused
(the shard store's build records), which a cached stage output could not say truthfully.
Everything else comes from the files the stages wrote (results.py), so the report of a
colleague's `dvc pull` shows the same figures.

Sections: a summary table per task; the model comparison (accuracy with its paired 95 % CI,
McNemar, parity, latency); robustness curves with every model overlaid per corruption type
(the reference model drawn thick and named); confusion matrices and concentration scatter
per model; detection PR curves and corruption figures (when that profile ran); data provenance.
"""
from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from evalstack.core.atomic import atomic_write_bytes
from evalstack.reporting import figures as figs
from evalstack.reporting.results import (
    ModelResult,
    ProfileResults,
    number,
    project_results,
    read_csv,
    read_json,
)
from evalstack.reporting.summary import classification_lines, detection_lines

OUT_DIR = Path("reports")


@dataclass
class Figure:
    name: str  # file name stem under reports/figures/
    title: str
    png: bytes


@dataclass
class Block:
    kind: str  # h2 | h3 | p | table | figures | pre
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


class Document:
    """A list of blocks rendered twice: HTML (figures inline) and Markdown (figures as files)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[Block] = []

    def h2(self, text: str) -> None:
        self.blocks.append(Block("h2", text))

    def h3(self, text: str) -> None:
        self.blocks.append(Block("h3", text))

    def p(self, text: str) -> None:
        self.blocks.append(Block("p", text))

    def pre(self, text: str) -> None:
        self.blocks.append(Block("pre", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        if rows:
            self.blocks.append(Block("table", header=header, rows=rows))

    def figures(self, figures: list[Figure]) -> None:
        if figures:
            self.blocks.append(Block("figures", figures=figures))

    def all_figures(self) -> list[Figure]:
        return [figure for block in self.blocks for figure in block.figures]

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            if block.kind in ("h2", "h3"):
                lines += [("## " if block.kind == "h2" else "### ") + block.text, ""]
            elif block.kind == "p":
                lines += [block.text, ""]
            elif block.kind == "pre":
                lines += ["```", block.text.rstrip("\n"), "```", ""]
            elif block.kind == "table":
                lines += ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
                lines += ["| " + " | ".join(row) + " |" for row in block.rows] + [""]
            else:
                lines += [f"![{figure.title}](figures/{figure.name}.png)" for figure in block.figures] + [""]
        return "\n".join(lines)

    def html(self) -> str:
        body = []
        for block in self.blocks:
            if block.kind in ("h2", "h3"):
                anchor = re.sub(r"[^a-z0-9]+", "-", block.text.lower()).strip("-")
                body.append(f'<{block.kind} id="{anchor}">{_inline(block.text)}</{block.kind}>')
            elif block.kind == "p":
                body.append(f"<p>{_inline(block.text)}</p>")
            elif block.kind == "pre":
                body.append(f"<pre>{html.escape(block.text)}</pre>")
            elif block.kind == "table":
                head = "".join(f"<th>{_inline(cell)}</th>" for cell in block.header)
                rows = "".join("<tr>" + "".join(f"<td>{_inline(cell)}</td>" for cell in row) + "</tr>"
                               for row in block.rows)
                body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
            else:
                cells = "".join(
                    f'<figure><img alt="{html.escape(f.title)}" title="{html.escape(f.title)}" '
                    f'src="data:image/png;base64,{base64.b64encode(f.png).decode()}">'
                    f"<figcaption>{html.escape(f.title)}</figcaption></figure>"
                    for f in block.figures
                )
                body.append(f'<div class="figures">{cells}</div>')
        return PAGE.format(title=html.escape(self.title), body="\n".join(body))


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 auto; padding: 1em 2em; max-width: 1200px; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }}
.scroll {{ overflow-x: auto; max-width: 100%; }}
table {{ border-collapse: collapse; margin: .5em 0 1em; font-size: .92em; }}
th, td {{ border: 1px solid #ccc; padding: .25em .6em; text-align: right; white-space: nowrap; }}
th:first-child, td:first-child {{ text-align: left; }}
thead {{ background: #f3f3f3; }}
.figures {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; max-width: 100%; }}
figure img {{ max-width: 100%; height: auto; display: block; }}
figcaption {{ font-size: .85em; color: #555; }}
code {{ background: #f3f3f3; padding: 0 .2em; }}
pre {{ background: #f6f6f6; padding: .6em; overflow-x: auto; }}
</style></head>
<body>
<h1>{title}</h1>
{body}
</body></html>
"""


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** in HTML; everything else escaped."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped)


def _f(value: float | None, pattern: str = "{:.3f}") -> str:
    return "–" if value is None else pattern.format(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


# -- sections --------------------------------------------------------------------------------------


def summary_section(doc: Document, profiles: list[ProfileResults]) -> None:
    doc.h2("Summary")
    doc.p("What `evalstack summary` prints at the end of `make repro`: each model's headline figures.")
    for results in profiles:
        lines = (classification_lines if results.profile == "classification" else detection_lines)(results)
        doc.pre("\n".join(lines))


def comparison_section(doc: Document, results: ProfileResults) -> None:
    root = results.root
    summary = read_csv(root / "comparison/summary.csv")
    if not summary:
        return
    doc.h2("Model comparison")
    split = results.split
    doc.p(f"Every model on the same items of the {split} split (paired by item). Accuracy with a paired "
          "bootstrap 95 % CI; RMSE/MAE in quantity points; latency = framework time per item at the infer "
          "batch size (measured on this machine, so it varies run to run).")
    for note in _lines(root / "comparison/notes.txt"):
        doc.p(f"Note: {note}")
    latency = {m.name: m.figures.get("latency_ms_per_item") for m in results.models}
    rows = [[r["model"], r["task"], r["n_items"], _f(number(r.get("accuracy"))),
             _ci(r), _f(number(r.get("rmse")), "{:.2f}"), _f(number(r.get("mae")), "{:.2f}"),
             _f(latency.get(r["model"]), "{:.3g}")] for r in summary]  # a PLS model takes microseconds
    doc.table(["model", "task", "items", "accuracy", "95 % CI", "RMSE", "MAE", "ms / item"], rows)
    doc.figures([Figure("model_comparison", "Model comparison: accuracy with 95 % CI (classifiers), RMSE "
                        "(concentration); models only", figs.comparison_with_ci(summary))])
    mcnemar = read_csv(root / "comparison/mcnemar.csv")
    if mcnemar:
        doc.h3("McNemar tests (classifiers, pairwise)")
        doc.p("`only a` / `only b`: items only that model got right; exact binomial below 25 discordant items, "
              "χ² with continuity correction above.")
        doc.table(["model a", "model b", "only a", "only b", "method", "p-value"],
                  [[r["model_a"], r["model_b"], r["only_a_correct"], r["only_b_correct"], r["method"],
                    _f(number(r.get("p_value")), "{:.3g}")] for r in mcnemar])
    parity = read_csv(root / "comparison/parity.csv")
    if parity:
        doc.h3("Export parity")
        doc.table(["model", "exported from", "items", "argmax agreement", "max |Δp|"],
                  [[r["model"], r["reference"], r["n_items"], _f(number(r.get("argmax_agreement")), "{:.4f}"),
                    _f(number(r.get("max_abs_probability_diff")), "{:.2g}")] for r in parity])


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def _ci(row: dict[str, str]) -> str:
    low, high = number(row.get("accuracy_ci_low")), number(row.get("accuracy_ci_high"))
    return "–" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"


def robustness_section(doc: Document, results: ProfileResults) -> None:
    metrics = read_json(results.root / "robustness/metrics.json")
    if not metrics or not metrics.get("models"):
        return
    reference = metrics.get("reference")
    doc.h2("Robustness under perturbations")
    doc.p(f"Accuracy per severity (0 = clean) for every model, one chart per perturbation type. "
          f"CE and mCE are relative to the reference model **{reference}** (thick line; CE = 100 for it).")
    doc.p(CORRUPTION_FIDELITY)
    if metrics.get("note"):
        doc.p(metrics["note"])
    models = metrics["models"]
    kinds = list(dict.fromkeys(kind for model in models.values() for kind in model["types"]))
    doc.figures([Figure(f"robustness_{_slug(kind)}", f"Accuracy vs severity: {kind} (all models; reference "
                        f"{reference})", figs.robustness_overlay(models, kind, reference)) for kind in kinds])
    rows = []
    for name, model in models.items():
        for kind, values in model["types"].items():
            rows.append([name + (" (reference)" if name == reference else ""), kind, _f(model["clean_accuracy"]),
                         *(_f(values["accuracy"].get(str(s))) for s in _severities(models)),
                         _f(values.get("ce"), "{:.1%}"), _f(values.get("relative_ce"), "{:.1%}"),
                         _f(max(values["flip_rate"].values(), default=None))])
    doc.table(["model", "type", "clean", *(f"s{s}" for s in _severities(models)), "CE", "rel. CE",
               "max flip rate"], rows)
    doc.table(["model", "mCE", "relative mCE", "cells", "perturbed forward passes", "clean forward passes (grid)"],
              [[name, _f(m.get("mce"), "{:.1%}"), _f(m.get("relative_mce"), "{:.1%}"), str(m["counts"]["cells"]),
                str(m["counts"]["perturbed_forward_passes"]), str(m["counts"]["clean_forward_passes"])]
               for name, m in models.items()])


def _severities(models: dict) -> list[str]:
    return sorted({s for m in models.values() for t in m["types"].values() for s in t["accuracy"]}, key=int)


def per_model_section(doc: Document, results: ProfileResults) -> None:
    root = results.root
    classifiers = [m for m in results.of_task("classify") if (root / f"plots/classify/pairs/{m.name}.csv").is_file()]
    if classifiers:
        doc.h2("Confusion matrices")
        doc.p(f"Rows: true class; columns: predicted class; items of the {results.split} split.")
        doc.figures([Figure(f"confusion_{_slug(m.name)}", f"Confusion matrix: {m.name} ({results.split} split)",
                            figs.confusion_png(read_csv(root / f"plots/classify/pairs/{m.name}.csv"),
                                               f"Confusion matrix: {m.name}")) for m in classifiers])
        doc.h3("Per-class accuracy")
        doc.figures([Figure(f"per_class_{_slug(m.name)}", f"Per-class accuracy: {m.name}",
                            figs.bars_png(read_csv(root / f"plots/classify/per_class/{m.name}.csv"), "accuracy",
                                          "class", f"Per-class accuracy: {m.name}"))
                     for m in classifiers if (root / f"plots/classify/per_class/{m.name}.csv").is_file()])
    regressors = [m for m in results.of_task("concentration")
                  if (root / f"plots/concentration/pairs/{m.name}.csv").is_file()]
    if regressors:
        doc.h2("Concentration: predicted vs actual")
        doc.figures([Figure(f"concentration_{_slug(m.name)}", f"Predicted vs actual quantity: {m.name}",
                            figs.scatter_png(read_csv(root / f"plots/concentration/pairs/{m.name}.csv"),
                                             f"Predicted vs actual quantity: {m.name}")) for m in regressors])


def detection_section(doc: Document, results: ProfileResults) -> None:
    root = results.root
    doc.h2("Detection")
    rows = [[m.name, _f(m.figures.get("mAP")), _f(m.figures.get("mAP50")), _f(m.figures.get("AR100")),
             _f(m.figures.get("mPC")), _f(m.figures.get("rPC")), str(m.n_items or "–")] for m in results.models]
    doc.table(["model", "mAP@[.5:.95]", "mAP@.5", "AR@100", "mPC", "rPC", "images"], rows)
    curves = {m.name: read_csv(root / f"plots/pr_curve/{m.name}.csv") for m in results.models}
    curves = {name: rows for name, rows in curves.items() if rows}
    if curves:
        doc.figures([Figure("detection_pr", "Precision–recall at IoU 0.5 (mean over classes), every detector",
                            figs.pr_overlay(curves))])
    grids = _detection_grids(root, [m.name for m in results.models])
    if grids:
        detection_grid_section(doc, grids)


def _detection_grids(root: Path, names: list[str]) -> dict[str, dict]:
    """Each model's corruption-grid details (reports/robustness/<model>.json, the robustness stage's)."""
    grids = {name: read_json(root / "reports/robustness" / f"{name}.json") for name in names}
    return {name: grid for name, grid in grids.items() if isinstance(grid, dict) and grid.get("cells")}


CORRUPTION_FIDELITY = ("The ImageNet-C types equal imagecorruptions 1.1.2 given the same random draws (README \"Equal to "
                       "the reference\"); each item has its own random stream, so the random types' images differ "
                       "pixel for pixel from one imagecorruptions run but come from the same distribution: these "
                       "figures are comparable with published COCO-C / ImageNet-C results in expectation.")


def detection_grid_section(doc: Document, grids: dict[str, dict]) -> None:
    """COCO-C: mAP against severity per corruption type with every model overlaid, then the tables."""
    first = next(iter(grids.values()))
    doc.h3("Under corruptions (COCO-C protocol)")
    doc.p(f"ImageNet-C corruptions of the original {first['split']} images, before letterboxing; ground truth "
          "unchanged. P_clean = clean mAP@[.5:.95], mPC = mean mAP over every type and severity, rPC = mPC / "
          "P_clean; consistency = share of clean detections (score ≥ evaluate.count_threshold) still found under "
          "corruption (same label, IoU ≥ 0.5).")
    doc.p(CORRUPTION_FIDELITY)
    kinds = list(dict.fromkeys(kind for grid in grids.values() for kind in grid["types"]))
    doc.figures([Figure(f"detection_grid_{_slug(kind)}", f"mAP vs severity: {kind} (all detectors)",
                        figs.detection_grid_overlay(grids, kind)) for kind in kinds])
    doc.table(["model", "P_clean", "mPC", "rPC", "P_clean@.5", "mPC@.5", "rPC@.5", "consistency"],
              [[name, _f(g["P_clean"]), _f(g["mPC"]), _f(g["rPC"]), _f(g["P50_clean"]), _f(g["mPC50"]),
                _f(g["rPC50"]), _f(g["consistency"])] for name, g in grids.items()])
    severities = sorted({cell["severity"] for grid in grids.values() for cell in grid["cells"]})
    rows = []
    for name, grid in grids.items():
        for kind, means in grid["types"].items():
            by_severity = {c["severity"]: c["mAP"] for c in grid["cells"] if c["kind"] == kind}
            rows.append([name, kind, *(_f(by_severity.get(s)) for s in severities), _f(means["mAP"]),
                         _f(means["consistency"])])
    doc.table(["model", "type", *(f"s{s}" for s in severities), "mean mAP", "consistency"], rows)
    doc.table(["model", "images (N)", "cells (P·I)", "clean forward passes (infer, once)",
               "perturbed forward passes (N·P·I)"],
              [[name, str(g["n_images"]), str(g["counts"]["cells"]), str(g["counts"]["clean_forward_passes"]),
                str(g["counts"]["perturbed_forward_passes"])] for name, g in grids.items()])


def provenance_section(doc: Document, profiles: list[ProfileResults], project: Path) -> None:
    from evalstack.reporting.provenance import layer_builds, source_lines

    doc.h2("Data provenance")
    for results in profiles:
        doc.h3(f"{results.profile.capitalize()} profile")
        for line in source_lines(results):
            doc.p(line)
        builds = layer_builds(results, project)
        if builds:
            doc.p("What the last build of each layer on this machine computed, and what it took from the shard "
                  "store (`evalstack why <layer>` explains why). Reused shards cost no forward passes.")
            doc.table(["layer", "items", "shards", "computed", "reused", "seeded", "built"], builds)


def build_document(project: Path) -> Document:
    profiles = project_results(project)
    doc = Document("evalstack report")
    if not profiles:
        doc.p("No results yet: run `make repro` (classification) or `make repro-detection` (detection).")
        return doc
    summary_section(doc, profiles)
    for results in profiles:
        if results.profile == "classification":
            comparison_section(doc, results)
            robustness_section(doc, results)
            per_model_section(doc, results)
        else:
            detection_section(doc, results)
    provenance_section(doc, profiles, project)
    doc.p("Also: `dvc metrics show` (one headline per model), `dvc plots show` (the DVC charts), "
          "`dvc exp show --only-changed` (experiments side by side).")
    return doc


def write_report(project: Path, out_dir: Path = OUT_DIR) -> Path:
    """reports/index.html, reports/index.md and reports/figures/*.png; returns the HTML path."""
    doc = build_document(project)
    out = project / out_dir
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    wanted = {f"{figure.name}.png" for figure in doc.all_figures()}
    for stale in figures.glob("*.png"):
        if stale.name not in wanted:
            stale.unlink()
    for figure in doc.all_figures():
        atomic_write_bytes(figures / f"{figure.name}.png", figure.png)
    atomic_write_bytes(out / "index.md", doc.markdown().encode())
    page = out / "index.html"
    atomic_write_bytes(page, doc.html().encode())
    return page


def png_of(figure) -> bytes:
    buffer = io.BytesIO()
    figs.save(figure, buffer)
    return buffer.getvalue()


__all__ = ["Document", "Figure", "ModelResult", "build_document", "png_of", "write_report"]
