"""The first screen: each model's headline figures in a few lines (≤ 100 columns), then where the report is.

`make repro` ends with it (`evalstack summary`); it reads what the stages wrote (results.py).
"""
from __future__ import annotations

from pathlib import Path

from evalstack.core import yamlload
from evalstack.reporting.results import ModelResult, ProfileResults, project_results

WIDTH = 100
REPORT = "reports/index.html"


def _f(value: float | None, pattern: str = "{:.3f}") -> str:
    return "–" if value is None else pattern.format(value)


def _accuracy(model: ModelResult) -> str:
    figures = model.figures
    low, high = figures.get("accuracy_ci_low"), figures.get("accuracy_ci_high")
    if low is None or high is None:
        return _f(figures.get("accuracy"))
    # The CI is the paired bootstrap over the items every model scored: show the accuracy it belongs to.
    return f"{_f(figures.get('paired_accuracy', figures.get('accuracy')))} [{low:.3f}, {high:.3f}]"


def _percent(value: float | None) -> str:
    return _f(value, "{:.1f}") if value is None else f"{100 * value:.1f}"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: indent + "  ".join(  # noqa: E731
        cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(cells, widths))
    ).rstrip()
    return [line(header), *(line(row) for row in rows)]


def classification_lines(results: ProfileResults) -> list[str]:
    lines: list[str] = []
    classifiers = results.of_task("classify")
    if classifiers:
        n = max((m.n_items or 0) for m in classifiers)
        lines.append(f"Drug classification ({results.split} split, {n} cards)")
        rows = [[m.name + (" (ref)" if m.reference else ""), _accuracy(m), _f(m.figures.get("macro_f1")),
                 _percent(m.figures.get("mce")), _percent(m.figures.get("relative_mce"))] for m in classifiers]
        lines += _table(["model", "accuracy [95% CI]", "macro-F1", "mCE %", "rel. mCE %"], rows)
    regressors = results.of_task("concentration")
    if regressors:
        n = max((m.n_items or 0) for m in regressors)
        lines.append(f"Concentration ({results.split} split, {n} cards; quantity points)")
        rows = [[m.name, _f(m.figures.get("rmse"), "{:.2f}"), _f(m.figures.get("mae"), "{:.2f}"),
                 str(int(m.figures.get("n_unscored") or 0))] for m in regressors]
        lines += _table(["model", "RMSE", "MAE", "unscored"], rows)
    return lines


def detection_lines(results: ProfileResults) -> list[str]:
    detectors = results.of_task("detect")
    n = max((m.n_items or 0) for m in detectors)
    rows = [[m.name, _f(m.figures.get("mAP")), _f(m.figures.get("mAP50")), _f(m.figures.get("mPC")),
             _f(m.figures.get("rPC"))] for m in detectors]
    return [f"Detection ({results.split} split, {n} images)",
            *_table(["model", "mAP@[.5:.95]", "mAP@.5", "mPC", "rPC"], rows)]


NO_MODELS = ("No models declared yet: add yours under `models:` in params.yaml (README \"Add a model\"), "
             "then `make repro`.\n")
NOT_RUN = "No results yet: run `make repro` (classification) or `make repro-detection`.\n"


def _declares_models(root: Path) -> bool:
    """Whether any profile's params.yaml lists a model (a project made without the demo models may not yet)."""
    for params in (root / "params.yaml", root / "detection/params.yaml"):
        if params.is_file() and (yamlload.safe_load(params.read_text()) or {}).get("models"):
            return True
    return False


def summary_text(root: Path) -> str:
    profiles = project_results(root)
    if not profiles:
        return NOT_RUN if _declares_models(root) else NO_MODELS
    lines: list[str] = []
    for results in profiles:
        lines += (classification_lines if results.profile == "classification" else detection_lines)(results)
        lines.append("")
    has_ref = any(m.reference for p in profiles for m in p.models)
    if has_ref:
        lines.append("mCE: corruption error relative to the reference model (ref), ImageNet-C style; lower is better.")
    if any(m.figures.get("mce") is not None and m.figures.get("relative_mce") is None
           for p in profiles for m in p.of_task("classify")):
        lines.append("rel. mCE –: undefined, the reference's error does not rise under every corruption type")
    report = root / REPORT
    where = f"Full report: {REPORT}" + (" (Markdown: reports/index.md)" if report.exists() else
                                        " (not written yet: `evalstack report`)")
    lines += [where, "Compare runs: dvc metrics diff · dvc exp show --only-changed · dvc plots diff"]
    too_wide = [line for line in lines if len(line) > WIDTH]
    if too_wide:  # model names are the only unbounded part: shorten them rather than wrap the screen
        lines = [line if len(line) <= WIDTH else line[: WIDTH - 1] + "…" for line in lines]
    return "\n".join(lines) + "\n"
