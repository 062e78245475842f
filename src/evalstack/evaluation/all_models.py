"""The evaluate stage: every declared model in one process, each model's outputs cached by key.

One process for all models rather than one DVC stage per model: an eval-only change (`evaluate.split`)
used to rerun one stage per model, and each paid an interpreter, its imports, the pipeline key's code
closure and DVC's rewrite of dvc.lock (issue 25, P1). A model's four outputs are a function of what its
key holds, so a model whose key is in the shard store is written from there instead of recomputed:
adding a sixth model evaluates one.

Every read is checked first, whether the outputs are then computed or reused: the raw layer's and each
predictions layer's shards against their index (sha256 and item count, remembered by the store's stamps
while a file's stat is unchanged), and each predictions layer against the model file and params now
(`open_predictions`), so a reuse refuses exactly what a computation would refuse.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from evalstack.cache.shardstore import ShardStore, StoreEntry
from evalstack.config import ModelSpec, model_spec
from evalstack.core.atomic import TEMP_SUFFIX, atomic_write_bytes
from evalstack.core.fingerprint import code_part, runtime_part
from evalstack.core.keys import Key, sha256_bytes, sha256_file
from evalstack.core.kinds import RAW_KIND
from evalstack.core.layers import INDEX_NAME, Layer, remembered_checks
from evalstack.evaluation.classification import HEADLINE_KEYS, ClassifierTally, EvaluationOutputs
from evalstack.evaluation.concentration import ConcentrationTally
from evalstack.evaluation.items import Tally, feed
from evalstack.models.predictions import expected_model_signature, open_predictions
from evalstack.preprocess.pipelines import pipeline_spec

EVALUATION_KIND = "evaluation"  # a store entry holding one model's evaluate outputs (see _bundle)
TASKS = tuple(HEADLINE_KEYS)  # plots/<task>/ exists for each, empty when no model has that task
PLOT_PARTS = ("pairs", "per_class")
ROLES = ("metrics", "details", *PLOT_PARTS)


@dataclass(frozen=True)
class EvaluateLayout:
    """Where the stage reads and writes; every output is a folder with one file per model."""

    raw: Path
    predictions: Path  # <model>/: each model's predictions layer
    metrics: Path  # <model>.json: the headline, for `dvc metrics` (see headline_metrics)
    details: Path  # <model>.json: every summary figure
    plots: Path  # <task>/pairs/<model>.csv and <task>/per_class/<model>.csv

    def plot_folders(self, task: str) -> list[Path]:
        return [self.plots / task / part for part in PLOT_PARTS]

    def outputs(self, name: str, task: str) -> EvaluationOutputs:
        return EvaluationOutputs(self.metrics / f"{name}.json", self.plots / task / "pairs" / f"{name}.csv",
                                 self.plots / task / "per_class" / f"{name}.csv", self.details / f"{name}.json",
                                 name, task)


@dataclass(frozen=True)
class ModelEvaluation:
    name: str
    task: str
    headline: dict[str, Any]  # what metrics/<model>.json holds for it
    reused: bool  # written from the store, not computed


def evaluate_models(params: Mapping[str, Any], layout: EvaluateLayout, store: ShardStore | None) -> list[ModelEvaluation]:
    """Evaluate every model under `models:` on `evaluate.split`; outputs of models no longer declared are removed."""
    split = str(params["evaluate"]["split"])
    checks = remembered_checks(store.stamps if store is not None else None)
    raw = Layer.open(layout.raw, kind=RAW_KIND)
    _check_shards(raw, checks)
    raw_index = sha256_file(raw.directory / INDEX_NAME)
    for folder in (layout.metrics, layout.details, *(f for task in TASKS for f in layout.plot_folders(task))):
        folder.mkdir(parents=True, exist_ok=True)
    plans = [_plan(params, model_spec(params, name), split, layout, raw_index, store, checks)
             for name in params["models"]]
    computed = [plan for plan in plans if plan.tally is not None]
    feed(layout.raw, [plan.tally for plan in computed])  # the raw layer read once for all (five times in the template)
    for plan in computed:
        plan.tally.write(plan.outputs)
        if store is not None:
            _keep(store, plan.key, plan.outputs)
    _remove_undeclared(layout, {plan.spec.name: plan.spec.task for plan in plans})
    if store is not None:
        store.finish_stage(set())  # with a remote: upload what is pending (nothing of ours needs protecting)
    return [ModelEvaluation(plan.spec.name, plan.spec.task, json.loads(plan.outputs.metrics.read_text())[plan.spec.name],
                            plan.tally is None) for plan in plans]


@dataclass(frozen=True)
class _Plan:
    spec: ModelSpec
    outputs: EvaluationOutputs
    key: Key
    tally: Tally | None  # None: the outputs were written from the store


def _plan(params: Mapping[str, Any], spec: ModelSpec, split: str, layout: EvaluateLayout, raw_index: str,
          store: ShardStore | None, checks: Mapping[str, Callable]) -> _Plan:
    """One model's key, and its outputs from the store when they are there; otherwise what will compute them."""
    predictions_dir = layout.predictions / spec.name
    signature = expected_model_signature(Layer.open(predictions_dir), spec)
    pipeline_key = pipeline_spec(params, spec.pipeline).cache_key()
    layer = open_predictions(predictions_dir, signature, pipeline_key, spec.name)  # refuses another model's
    _check_shards(layer, checks)
    key = evaluation_key(spec, split, raw_index, sha256_file(layer.directory / INDEX_NAME))
    outputs = layout.outputs(spec.name, spec.task)
    if store is not None and _restore(store, key, outputs):
        return _Plan(spec, outputs, key, None)
    if store is not None:
        # The result is stored under the index's digests: read the predictions it is computed from, not only
        # their stamps, or one damaged with its size and mtime kept would reach every checkout sharing the
        # store (a hunt's silent wrong answer). The raw layer keeps the stat bet here: evaluate reads only
        # its labels, and reading its images in full would cost ~9 s an evaluate at 8,001 cards.
        _check_shards(layer, {**checks, "sha256": store.stamps.sha256_read_here})
    tally = ConcentrationTally if spec.task == "concentration" else ClassifierTally
    return _Plan(spec, outputs, key, tally(spec, layer, split))


def evaluation_key(spec: ModelSpec, split: str, raw_index_sha256: str, predictions_index_sha256: str) -> Key:
    """What one model's evaluate outputs are a function of.

    The two indexes name every shard's sha256 and the layers' own keys (model signature, pipeline, code), so
    any change of truth, split assignment or prediction is a new key; the model's name is in its headline, its
    labels and task decide how predictions are read; the code is this module's import closure (the metrics,
    the readers, the output formats)."""
    return Key(EVALUATION_KIND, {
        "model": spec.name, "task": spec.task, "labels": list(spec.labels), "split": split,
        "raw_index": raw_index_sha256, "predictions_index": predictions_index_sha256,
        "code": code_part(__name__), "runtime": runtime_part("numpy"),
    })


def _check_shards(layer: Layer, checks: Mapping[str, Callable]) -> None:
    for shard in layer.shards:
        layer.check_shard(shard, **checks)


def _bundle(outputs: EvaluationOutputs) -> bytes:
    """The four files' exact bytes (base64: no text decoding, so no locale or newline translation between
    what was computed and what a reuse writes)."""
    return json.dumps({role: base64.b64encode(_path(outputs, role).read_bytes()).decode("ascii") for role in ROLES},
                      sort_keys=True).encode()


def _path(outputs: EvaluationOutputs, role: str) -> Path:
    path = getattr(outputs, role)
    assert path is not None, role  # the layout names all four
    return path


def _scratch(store: ShardStore, key: Key) -> Path:
    """Where an entry passes through on its way in or out: beside the store's shards, as a temp file its gc
    clears if a crash leaves it, never inside an output folder that DVC would cache."""
    path = store.shard_path(key.hex).with_name(f".{key.hex}.evaluation{TEMP_SUFFIX}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _keep(store: ShardStore, key: Key, outputs: EvaluationOutputs) -> None:
    data = _bundle(outputs)
    temporary = _scratch(store, key)
    atomic_write_bytes(temporary, data, durable=False)
    try:
        store.put(StoreEntry(key.hex, sha256_bytes(data), len(data), 1, EVALUATION_KIND, json.loads(key.to_json())),
                  temporary)
    finally:
        temporary.unlink(missing_ok=True)


def _restore(store: ShardStore, key: Key, outputs: EvaluationOutputs) -> bool:
    """Write the outputs from the store's entry for `key`; False on a miss (the store checks the entry's sha256,
    and drops a damaged one, before it is placed)."""
    temporary = _scratch(store, key)
    try:
        if store.materialise(key.hex, temporary) is None:
            return False
        files = json.loads(temporary.read_bytes())
    finally:
        temporary.unlink(missing_ok=True)
    for role in ROLES:
        atomic_write_bytes(_path(outputs, role), base64.b64decode(files[role]))
    return True


def _remove_undeclared(layout: EvaluateLayout, tasks: Mapping[str, str]) -> None:
    """Outputs of a model dropped from params.yaml, or of its former task, are removed (DVC empties the folders
    before it runs the stage; a run by hand does not)."""
    owners = {layout.metrics: set(tasks), layout.details: set(tasks)}
    for task in TASKS:
        for folder in layout.plot_folders(task):
            owners[folder] = {name for name, its_task in tasks.items() if its_task == task}
    for folder, names in owners.items():
        for path in folder.iterdir():
            if path.is_file() and path.suffix in (".json", ".csv") and path.stem not in names:
                path.unlink()
