"""Every model on the same test items, paired by identity (the source's id): the numbers behind the comparison report.

Reads predictions layers only (no forward pass), so comparing is cheap and
always consistent with what `infer` cached.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from evalstack.config import ModelSpec
from evalstack.core.keys import Key
from evalstack.core.kinds import PREDICTIONS_KIND
from evalstack.core.layers import Layer
from evalstack.evaluation.classification import label_indices
from evalstack.evaluation.concentration import predicted_quantities
from evalstack.evaluation.items import check_frame_aligned, in_split
from evalstack.evaluation.significance import DEFAULT_RESAMPLES, accuracy_intervals, mcnemar
from evalstack.models.predictions import batch_size_of, expected_code, expected_model_signature, predictions_key


@dataclass(frozen=True)
class ModelRun:
    """One model's predictions layer and what the comparison needs to know about it."""

    name: str
    task: str
    adapter: str
    pipeline: str
    layer: Path
    latency: dict[str, Any] | None = None  # from the infer stage's latency file
    parity_of: str | None = None  # the model this one is an export of


@dataclass(frozen=True)
class CompareConfig:
    split: str = "test"
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    level: float = 0.95


@dataclass
class Comparison:
    """The tables, as DataFrames (the API returns this; the stage writes it out)."""

    summary: pd.DataFrame
    mcnemar: pd.DataFrame
    per_class: pd.DataFrame
    concentration_per_class: pd.DataFrame
    parity: pd.DataFrame
    n_items: int
    notes: list[str] = field(default_factory=list)


def open_fresh(run: ModelRun, spec: ModelSpec, pipeline_key: Key) -> Layer:
    """The layer, or CacheStaleError if its weights, labels, task or pipeline differ from params now."""
    layer = Layer.open(run.layer, kind=PREDICTIONS_KIND)
    expected = predictions_key(expected_model_signature(layer, spec), pipeline_key, expected_code(layer.key),
                               batch_size_of(layer.key))
    layer.expect_key(expected, f"dvc repro infer@{run.name}")
    return layer


@dataclass
class _Loaded:
    run: ModelRun
    parts: dict[str, Any]
    frame: pd.DataFrame  # index id; columns label (int), logits (object of arrays)


def _load(run: ModelRun, truth: pd.DataFrame) -> _Loaded:
    """A model's predictions, indexed by the raw layer's ids (its rows are the raw layer's, checked)."""
    layer = Layer.open(run.layer, kind=PREDICTIONS_KIND)
    check_frame_aligned(layer, truth)
    logits = layer.column("logits")
    frame = pd.DataFrame({"label": layer.column("label")}, index=truth.index)
    return _Loaded(run, dict(layer.key.parts["model"]), frame.assign(logits=list(logits)))


def _logits(loaded: _Loaded, keys: pd.Index) -> np.ndarray:
    return np.stack(loaded.frame.loc[keys, "logits"].to_list()) if len(keys) else np.zeros((0, 0))


def compare_runs(runs: list[ModelRun], truth: pd.DataFrame, config: CompareConfig = CompareConfig()) -> Comparison:
    loaded = [_load(run, truth) for run in runs]
    test = truth.index[in_split(truth["split"].to_numpy(), config.split)]
    paired = test
    notes = []
    for model in loaded:
        missing = paired.difference(model.frame.index)
        if len(missing):
            notes.append(f"{model.run.name} has no prediction for {len(missing)} {config.split} items; left out")
        paired = paired.intersection(model.frame.index)
    paired = paired.sort_values()
    if not len(paired):
        raise ValueError(f"no {config.split!r} item has predictions from every model")
    facts = truth.loc[paired]
    classifiers = [m for m in loaded if m.run.task == "classify"]
    regressors = [m for m in loaded if m.run.task == "concentration"]
    correct = {m.run.name: _correct(m, paired, facts) for m in classifiers}
    quantities = {m.run.name: predicted_quantities(_logits(m, paired), m.parts, facts["sample_name"].to_numpy())
                  for m in regressors}
    summary = _summary(loaded, correct, quantities, facts, config)
    return Comparison(
        summary=summary,
        mcnemar=_mcnemar_table(correct),
        per_class=_per_class_accuracy(correct, facts),
        concentration_per_class=_per_class_rmse(quantities, facts),
        parity=_parity(loaded),
        n_items=len(paired),
        notes=notes,
    )


def _correct(model: _Loaded, keys: pd.Index, facts: pd.DataFrame) -> np.ndarray:
    # as evaluate refuses it: a true class outside the model's labels (`Amoxicillin` for `amoxicillin`) is an
    # error, not a card counted wrong (an ad-hoc model's accuracy came out 0.0, exit 0: a hunt)
    label_indices(facts["sample_name"].astype(str).tolist(), tuple(model.parts["labels"]), model.run.name)
    labels = np.asarray(model.parts["labels"], dtype=object)
    return labels[model.frame.loc[keys, "label"].to_numpy()] == facts["sample_name"].to_numpy()


def _summary(loaded, correct, quantities, facts, config: CompareConfig) -> pd.DataFrame:
    names = list(correct)
    low, high = (accuracy_intervals(np.stack([correct[n] for n in names]), config.n_resamples, config.seed,
                                    config.level) if names else ([], []))
    intervals = {name: (lo, hi) for name, lo, hi in zip(names, low, high)}
    actual = facts["quantity"].to_numpy(float)
    timed = any(model.run.latency for model in loaded)
    rows = []
    for model in loaded:
        run = model.run
        row = {"model": run.name, "task": run.task, "adapter": run.adapter, "pipeline": run.pipeline,
               "n_items": len(facts), "accuracy": np.nan, "accuracy_ci_low": np.nan, "accuracy_ci_high": np.nan,
               "rmse": np.nan, "mae": np.nan, "n_unscored": 0}
        if timed:  # the notebook API times its runs; the compare stage leaves measurements out (see declared_run)
            row["latency_ms_per_item"] = (run.latency or {}).get("ms_per_item", np.nan)
        if run.name in correct:
            row["accuracy"] = float(correct[run.name].mean())
            row["accuracy_ci_low"], row["accuracy_ci_high"] = map(float, intervals[run.name])
        if run.name in quantities:
            predicted = quantities[run.name]
            scored = ~np.isnan(predicted)
            error = predicted[scored] - actual[scored]
            row["rmse"] = float(np.sqrt(np.mean(error**2))) if scored.any() else np.nan
            row["mae"] = float(np.mean(np.abs(error))) if scored.any() else np.nan
            row["n_unscored"] = int((~scored).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _mcnemar_table(correct: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for first, second in combinations(correct, 2):
        result = mcnemar(correct[first], correct[second])
        rows.append({"model_a": first, "model_b": second, "only_a_correct": result.only_first,
                     "only_b_correct": result.only_second, "method": result.method,
                     "statistic": result.statistic, "p_value": result.p_value})
    return pd.DataFrame(rows, columns=["model_a", "model_b", "only_a_correct", "only_b_correct", "method",
                                       "statistic", "p_value"])


def _per_class_accuracy(correct: dict[str, np.ndarray], facts: pd.DataFrame) -> pd.DataFrame:
    classes = facts["sample_name"].to_numpy()
    frame = pd.DataFrame({"class": classes, **{name: values.astype(float) for name, values in correct.items()}})
    grouped = frame.groupby("class", sort=True)
    table = grouped.mean()
    table.insert(0, "support", grouped.size())
    return table.reset_index()


def _per_class_rmse(quantities: dict[str, np.ndarray], facts: pd.DataFrame) -> pd.DataFrame:
    actual = facts["quantity"].to_numpy(float)
    frame = pd.DataFrame({"class": facts["sample_name"].to_numpy(),
                          **{name: (values - actual) ** 2 for name, values in quantities.items()}})
    grouped = frame.groupby("class", sort=True)
    table = np.sqrt(grouped.mean())  # NaN (unscored) items are skipped by mean()
    table.insert(0, "support", grouped.size())
    return table.reset_index()


def _parity(loaded: list[_Loaded]) -> pd.DataFrame:
    """Exported model vs its source, over every item both scored (a numerical check, not an evaluation)."""
    by_name = {m.run.name: m for m in loaded}
    rows = []
    for model in loaded:
        source = by_name.get(model.run.parity_of or "")
        if source is None:
            continue
        keys = model.frame.index.intersection(source.frame.index).sort_values()
        mine, theirs = _logits(model, keys), _logits(source, keys)
        if mine.shape != theirs.shape:
            raise ValueError(f"parity {model.run.name} vs {source.run.name}: output shapes {mine.shape} and {theirs.shape}")
        rows.append({"model": model.run.name, "reference": source.run.name, "n_items": len(keys),
                     "argmax_agreement": float(np.mean(mine.argmax(1) == theirs.argmax(1))),
                     "max_abs_probability_diff": float(np.max(np.abs(softmax(mine.astype(np.float64), 1) - softmax(theirs.astype(np.float64), 1))))})
    return pd.DataFrame(rows, columns=["model", "reference", "n_items", "argmax_agreement",
                                       "max_abs_probability_diff"])


def declared_run(params: dict[str, Any], name: str, predictions: Path, latency: Path | None,
                 root: Path = Path(".")) -> ModelRun:
    """The run of a model declared in params.yaml, after checking its layer is not stale.

    `latency` (the folder of infer's latency files) is None in the compare stage: a measurement
    would make its cached output differ from a rerun's, and a dependency on that folder (files of
    several stages) is one `dvc repro --pull` cannot fetch. The report reads latency itself.
    """
    from evalstack.config import model_spec
    from evalstack.models.latency import read_latency
    from evalstack.preprocess.pipelines import pipeline_spec

    spec = model_spec(params, name, root)
    run = ModelRun(name=name, task=spec.task, adapter=spec.adapter, pipeline=spec.pipeline,
                   layer=predictions / name, latency=read_latency(latency / f"{name}.json") if latency else None,
                   parity_of=spec.options.get("parity_of"))
    open_fresh(run, spec, pipeline_spec(params, spec.pipeline).cache_key())
    return run
