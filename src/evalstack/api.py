"""The notebook API: a dataset object over a project, sharing every layer and cache with `dvc repro`.

Declared models (params.yaml) are run by DVC itself (`infer@name` through
dvc.repo.Repo), so their results land in dvc.lock and the run-cache and a later
`dvc repro` has nothing left to do — and what `dvc repro` already did is not
done again here. An ad-hoc adapter (not in params.yaml) reads the same
preprocessed layer and writes its predictions layer to `data/adhoc/<name>/`,
keyed by model signature + pipeline key, so calling it again is free.
"""
from __future__ import annotations

import operator
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from evalstack.cache.shardstore import open_store
from evalstack.config import infer_batch_size, load_params, resolve_labels
from evalstack.core.kinds import PREDICTIONS_KIND
from evalstack.core.layers import Layer, StoreError
from evalstack.evaluation.comparison import CompareConfig, Comparison, ModelRun, compare_runs, declared_run
from evalstack.evaluation.concentration import predicted_quantities
from evalstack.evaluation.items import check_frame_aligned, truth_frame
from evalstack.models.adapters.base import ModelAdapter
from evalstack.models.inference import infer_layer, inference_code
from evalstack.models.latency import ensure_timed, latency_record, read_latency, write_latency
from evalstack.models.predictions import predictions_key
from evalstack.preprocess.pipelines import pipeline_spec

ADHOC_DIR = Path("data/adhoc")
STAGES_PARAMS = "params.yaml"  # what dvc.yaml's stages read (DVC's default params file)


class Dataset:
    """A project's dataset, e.g. `Dataset(".")` in the project directory."""

    def __init__(self, project: str | Path = ".", params_file: str = "params.yaml"):
        self.root = Path(project).resolve()
        self.params_file = self.root / params_file
        if self.params_file.resolve() != (self.root / STAGES_PARAMS).resolve():
            # The stages `dvc repro` runs for this object read params.yaml: results computed under it would be
            # returned as another file's (a hunt found them, exit 0).
            raise ValueError(f"Dataset(params_file={params_file!r}): the stages this API runs read "
                             f"{self.root / STAGES_PARAMS}, so results would be computed under it, not under "
                             f"{params_file}. Edit params.yaml (or `dvc exp run -S key=value`) instead")
        self.stages_run: list[str] = []  # what the last call had DVC execute (empty: all cached)
        self.predicting_passes = 0  # forward passes the last call's ad-hoc predictions took (latency timing apart)

    @property
    def params(self) -> dict:
        return load_params(self.params_file)

    def labels(self, name: str) -> tuple[str, ...]:
        return resolve_labels(self.params, name)

    def _reproduce(self, *targets: str) -> None:
        from dvc.repo import Repo

        with Repo(str(self.root)) as repo:
            for target in targets:
                # dvc resolves a bare stage name against the current directory; anchor it to this project.
                stages = repo.reproduce(f"{self.root / 'dvc.yaml'}:{target}")
                self.stages_run += [stage.name or stage.addressing for stage in stages]

    def download_and_cache(self, force_refresh: bool = False) -> pd.DataFrame:
        """Fetch the raw layer once (`dvc repro fetch`); returns one row per card."""
        self.stages_run = []
        if not force_refresh:
            self._reproduce("fetch")
            return self.items()
        from dvc.repo import Repo

        target = f"{self.root / 'dvc.yaml'}:fetch"
        with Repo(str(self.root)) as repo:
            (fetch,) = repo.stage.collect(target)
            # What fetch reads first (synth in the template, your stage that writes a registry) is brought up to date
            # as `dvc repro` would: forcing fetch alone read it as it was, older data than a plain call returned.
            # Then fetch itself, forced, so never restored from the run-cache: a source that changed with no dep
            # changing (a server) gave the run-cache's old copy (both found by a hunt and a review).
            ran = [stage for upstream in repo.index.graph.successors(fetch)
                   for stage in repo.reproduce(f"{upstream.path}:{upstream.name}")]
            ran += repo.reproduce(target, force=True, single_item=True)
        self.stages_run = list(dict.fromkeys(stage.name or stage.addressing for stage in ran))
        return self.items()

    def items(self) -> pd.DataFrame:
        return truth_frame(self.root / "data/raw")

    def preprocessed_batches(self, pipeline: str, batch_size: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(item keys, model-ready arrays) of a declared pipeline, computed once by `preprocess@<pipeline>`."""
        _check_batch_size(batch_size)
        self.stages_run = []
        self._reproduce(f"preprocess@{pipeline}")
        layer = Layer.open(self.root / "data/preprocessed" / pipeline)
        for batch in layer.iter_batches(["item_key", "x"], batch_size):
            yield batch["item_key"].astype(str), batch["x"].astype(np.float32)

    def apply_model(self, model: str | ModelAdapter, batch_size: int | None = None) -> pd.DataFrame:
        """Predictions joined with the labels, one row per card; `frame.attrs` says what was computed."""
        self.stages_run = []
        self.predicting_passes = 0
        run = self._run(model, batch_size)
        if isinstance(model, str):
            # what infer@<model> computed, as the store's record of that build says (the latency record, read here
            # before, holds no pass count: every declared model reported 0, a review found)
            record = open_store(self.params, self.root).load_build(run.layer) if f"infer@{model}" in self.stages_run \
                else None
            forward_passes = int((record or {}).get("counts", {}).get("forward_passes", 0))
        else:
            forward_passes = self.predicting_passes
        frame = predictions_frame(Layer.open(run.layer, kind=PREDICTIONS_KIND), self.items())
        frame.attrs.update({"layer": str(run.layer), "stages_run": list(self.stages_run),
                            "forward_passes": forward_passes})
        return frame

    def compare_models(self, models: Sequence[str | ModelAdapter], split: str | None = None) -> Comparison:
        """Every model on the same items of `split` (default: evaluate.split), paired by id."""
        _check_distinct(models)
        self.stages_run = []
        runs = [self._run(model, None) for model in models]
        settings = self.params.get("compare") or {}
        config = CompareConfig(
            split=split or self.params["evaluate"]["split"],
            n_resamples=int(settings.get("bootstrap_resamples", 2000)),
            seed=int(settings.get("seed", 0)),
            level=float(settings.get("level", 0.95)),
        )
        return compare_runs(runs, self.items(), config)

    def _run(self, model: str | ModelAdapter, batch_size: int | None) -> ModelRun:
        if batch_size is not None:
            _check_batch_size(batch_size)
        if isinstance(model, str):
            declared = infer_batch_size(self.params)
            if batch_size is not None and batch_size != declared:
                # infer@<model> runs at infer.batch_size, which is in its predictions key (a batch's composition
                # can change a framework's rounding): another size here was ignored, and that layer returned
                raise ValueError(f"apply_model({model!r}, batch_size={batch_size}): a declared model is inferred by "
                                 f"`dvc repro` at infer.batch_size ({declared}) in params.yaml; set it there, or leave "
                                 "batch_size out")
            self._reproduce(f"infer@{model}")
            return declared_run(self.params, model, self.root / "data/predictions", self.root / "data/latency",
                                self.root)
        return self._run_adhoc(model, infer_batch_size(self.params) if batch_size is None else int(batch_size))

    def _run_adhoc(self, adapter: ModelAdapter, batch_size: int) -> ModelRun:
        spec = adapter.spec
        self._reproduce(f"preprocess@{spec.pipeline}")
        pipeline_key = pipeline_spec(self.params, spec.pipeline).cache_key()
        out = self.root / ADHOC_DIR / safe_name(spec.name)
        latency_file = out.with_name(out.name + ".latency.json")
        expected = predictions_key(adapter.signature(), pipeline_key, inference_code(type(adapter)), batch_size)
        preprocessed = self.root / "data/preprocessed" / spec.pipeline
        if not _is_current(out, expected.hex, preprocessed):
            # Through the same shard store as the stages, so a later `dvc repro` of this model reuses it.
            passes_before = adapter.forward_passes
            infer_layer(preprocessed, out, adapter, batch_size, open_store(self.params, self.root))
            # what the predictions took; the latency timing's passes below are not predictions
            self.predicting_passes += adapter.forward_passes - passes_before
            ensure_timed(adapter, preprocessed, batch_size)
            write_latency(latency_file, latency_record(adapter, batch_size))
        return ModelRun(spec.name, spec.task, spec.adapter, spec.pipeline, out, read_latency(latency_file),
                        spec.options.get("parity_of"))


def _check_batch_size(batch_size: object) -> None:
    # `batch_size or default` took 0 for the default, and a negative size yielded no batch at all (a hunt); any
    # integer type is one (numpy's, from a loop over np.arange), a bool or a float is not
    try:
        size = operator.index(batch_size)
    except TypeError:
        size = None
    if isinstance(batch_size, bool) or size is None or size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")


def _check_distinct(models: Sequence[str | ModelAdapter]) -> None:
    """The comparison pairs models by name, and an ad-hoc model's predictions live in a folder named after it: two
    models under one name, or two ad-hoc names that make one folder, would both be read as one of them."""
    names = [model if isinstance(model, str) else model.spec.name for model in models]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"compare_models: {', '.join(map(repr, twice))} given twice: models are compared by name, "
                         "so give each its own (ModelSpec(name=...))")
    folders: dict[str, str] = {}
    for model in models:
        if isinstance(model, str):
            continue
        folder = safe_name(model.spec.name)
        if folder in folders:
            raise ValueError(f"compare_models: {folders[folder]!r} and {model.spec.name!r} would both keep their "
                             f"predictions in {ADHOC_DIR}/{folder}: give one of them another name")
        folders[folder] = model.spec.name


def safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".")
    if not cleaned:
        raise ValueError(f"model name {name!r} has no usable characters for a folder name")
    return cleaned


def _is_current(directory: Path, key_hex: str, preprocessed: Path) -> bool:
    """Whether an ad-hoc predictions layer is the one to give: its key (model, pipeline, code, batch size), and
    built from the preprocessed layer as it is now (the key does not name the cards: after new cards, the shards
    that changed are computed, the others come from the store)."""
    try:
        layer = Layer.open(directory, kind=PREDICTIONS_KIND)
        upstream = Layer.open(preprocessed)
    except StoreError:
        return False
    return layer.key.hex == key_hex and [s.upstream for s in layer.shards] == [s.sha256 for s in upstream.shards]


def predictions_frame(layer: Layer, truth: pd.DataFrame) -> pd.DataFrame:
    """A predictions layer as a DataFrame: truth columns + prediction (label name or quantity)."""
    check_frame_aligned(layer, truth)  # rows are the raw layer's items, in order; joined by id
    parts = layer.key.parts["model"]
    facts = truth
    frame = facts.copy()
    logits = layer.column("logits")
    if parts.get("task") == "concentration":
        frame["prediction"] = predicted_quantities(logits, parts, facts["sample_name"].to_numpy())
    else:
        frame["prediction"] = np.asarray(parts["labels"], dtype=object)[layer.column("label")]
        frame["probability"] = layer.column("probability")
        frame["energy"] = layer.column("energy")
        frame["correct"] = frame["prediction"] == frame["sample_name"]
    return frame
