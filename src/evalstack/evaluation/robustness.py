"""The robustness grid: one model × (perturbation type, severity) cells over the cached baseline.

Each cell is a predictions layer built from the model's preprocessed layer through
the shard store: a cell shard is addressed by (preprocessed shard sha256, the
split's items in it, model signature, pipeline, perturbation type, severity, seed,
perturbation version). Adding a severity or a type computes only the new cells;
nothing is preprocessed again and the clean predictions are read from the infer
stage's layer (its model signature checked), never recomputed.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import h5py
import numpy as np
from tqdm import tqdm

from evalstack.cache.incremental import DerivedLayerSpec, LayerBuild, ShardContent, build_derived_layer
from evalstack.cache.shardstore import ShardStore
from evalstack.cache.threads import ThreadExecutor
from evalstack.core.fingerprint import code_part, runtime_part
from evalstack.core.keys import Key, sha256_bytes
from evalstack.core.kinds import PREDICTIONS_KIND, PREPROCESSED_KIND
from evalstack.core.layers import ITEM_KEY, Layer, ShardInfo, read_column, remove_other_layers
from evalstack.evaluation.classification import label_indices
from evalstack.evaluation.items import Items, read_items
from evalstack.models.predictions import PREDICTION_VALUES, open_predictions, prediction_columns
from evalstack.preprocess import perturbations as perturb
from evalstack.preprocess.perturbations import PERTURBATION_RUNTIME, Cell

if TYPE_CHECKING:  # the grid runs whatever adapter the stage loaded; it imports none itself
    from evalstack.models.adapters.base import ModelAdapter
    from evalstack.models.signatures import DeferredAdapter


class RobustnessError(ValueError):
    """The robustness grid is configured wrongly or its inputs do not fit."""


@dataclass(frozen=True)
class GridConfig:
    types: tuple[str, ...]
    severities: tuple[int, ...]
    seed: int = 0
    split: str = "test"
    reference: str = ""  # the model CE is normalised by (as ImageNet-C uses AlexNet)

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> "GridConfig":
        config = cls(
            types=tuple(str(t) for t in section.get("types") or ()),
            severities=tuple(int(s) for s in section.get("severities") or ()),
            seed=int(section.get("seed", 0)),
            split=str(section.get("split", "test")),
            reference=str(section.get("reference", "")),
        )
        if not config.types or not config.severities:
            raise RobustnessError("robustness.types and robustness.severities must not be empty")
        for kind in config.types:
            for severity in config.severities:
                perturb.check(kind, severity)
        return config

    def cells(self) -> list["Cell"]:
        return [Cell(kind, severity) for kind in self.types for severity in self.severities]


def cell_key(model_signature: Key, pipeline_key: Key, cell: Cell, seed: int, code: dict[str, str],
             batch_size: int | None = None) -> Key:
    """`code`: `grid_code(adapter module)`, the grid's own closure (perturbations included) and the adapter's;
    the batch size as in models.predictions.predictions_key."""
    perturbation = {"type": cell.kind, "severity": cell.severity, "seed": seed}
    parts: dict[str, Any] = {
        "model": dict(model_signature.parts), "pipeline": dict(pipeline_key.parts), "perturbation": perturbation,
        "code": code, "runtime": runtime_part(*PERTURBATION_RUNTIME),
    }
    if batch_size is not None:
        parts["batch_size"] = int(batch_size)
    return Key("robust_predictions", parts)


def grid_code(adapter_module: str) -> dict[str, str]:
    return code_part(adapter_module, __name__)


@dataclass(frozen=True)
class GridBuild:
    model: str
    cells: dict[str, LayerBuild]
    clean: Layer
    split_rows: np.ndarray  # positions (in the raw layer) of the split's items, in the order of the cell layers
    forward_passes: int  # counted by the adapter in this run: all of them perturbed


class SplitSelection:
    """Which rows of each preprocessed shard belong to the split (by the raw layer's split column, per
    row: identity, not content), and a digest naming them by id and item key."""

    def __init__(self, source: Layer, items: Items, chosen: np.ndarray):
        self.items, self.chosen = items, chosen
        starts = np.concatenate([[0], np.cumsum([shard.n_items for shard in source.shards])]).astype(np.int64)
        self._start = {shard.name: int(start) for shard, start in zip(source.shards, starts)}

    def rows(self, shard: ShardInfo) -> np.ndarray:
        start = self._start[shard.name]
        return np.flatnonzero(self.chosen[start : start + shard.n_items])

    def digest(self, shard: ShardInfo) -> str:
        rows = self.rows(shard) + self._start[shard.name]
        named = (f"{self.items.ids[row]}:{self.items.keys[row]}" for row in rows)
        return sha256_bytes("\n".join(named).encode())


def build_grid(
    raw_dir: Path,
    preprocessed_dir: Path,
    clean_dir: Path,
    out_dir: Path,
    adapter: ModelAdapter | DeferredAdapter,
    config: GridConfig,
    store: ShardStore | None = None,
    batch_size: int = 32,
    threads: int = 1,
) -> GridBuild:
    """Every cell of the grid for one model, as predictions layers under `out_dir/<type>-<severity>`.

    `threads` perturb a batch's images side by side. Each image's perturbation is a function of the image,
    its item key, the cell and the seed alone, so the bytes do not depend on how many there are."""
    if threads < 1:
        raise RobustnessError(f"the grid needs at least one perturbation thread, not {threads}")
    source = Layer.open(preprocessed_dir, kind=PREPROCESSED_KIND)
    signature = adapter.signature()
    clean = open_predictions(clean_dir, signature, source.key, adapter.spec.name)
    items = read_items(raw_dir)
    items.check_aligned(source)
    items.check_aligned(clean)
    try:
        chosen = items.in_split(config.split)
    except ValueError as error:
        raise RobustnessError(str(error)) from None
    selection = SplitSelection(source, items, chosen)
    n_classes = len(adapter.spec.labels)
    passes_before = adapter.forward_passes
    builds = {}
    code = grid_code(adapter.code_module)
    # The perturbations (numpy, scipy.ndimage, OpenCV) release the GIL: threads share the stage's loaded model
    # and its process, where worker processes would each load the model again. `threads` shards are under way
    # at once, so that a shard's read, forward passes and write overlap with the next one's perturbations (one
    # shard at a time kept ~1.56 of 2 cores busy); the model runs one batch at a time.
    shards = ThreadExecutor(threads)
    predicting = threading.Lock()
    with ThreadPoolExecutor(threads, thread_name_prefix="perturb") if threads > 1 else nullcontext() as pool:
        for cell in config.cells():
            key = cell_key(signature, source.key, cell, config.seed, code, batch_size)
            label = f"model {adapter.spec.name} under {cell.kind} severity {cell.severity}"
            labels = {"model": f"model {adapter.spec.name}", "pipeline": f"pipeline {adapter.spec.pipeline}",
                      "perturbation": "perturbation", "code": "code", "batch_size": "infer.batch_size"}
            spec = DerivedLayerSpec(PREDICTIONS_KIND, key, label, labels, "forward_passes")
            compute = _cell_compute(adapter, cell, config.seed, selection, batch_size, n_classes, predicting, pool)
            builds[cell.name] = build_derived_layer(source, out_dir / cell.name, spec, compute, store, shards,
                                                    selection=selection.digest)
    remove_other_layers(out_dir, set(builds))
    return GridBuild(adapter.spec.name, builds, clean, np.flatnonzero(chosen), adapter.forward_passes - passes_before)


def _cell_compute(adapter: ModelAdapter | DeferredAdapter, cell: Cell, seed: int, selection: SplitSelection, batch_size: int,
                  n_classes: int, predicting: threading.Lock, pool: ThreadPoolExecutor | None = None):
    def perturbed(image: np.ndarray, item: str) -> np.ndarray:
        return perturb.perturb(image, cell.kind, cell.severity, str(item), seed)

    mapped = pool.map if pool is not None else map  # both keep the batch's order

    def compute(shard: ShardInfo, path: Path, progress: tqdm) -> ShardContent:
        rows = selection.rows(shard)
        with h5py.File(path, "r") as handle:
            keys = read_column(handle, ITEM_KEY)[rows]
            parts = []
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                images = read_column(handle, "x", slice(chunk[0], chunk[-1] + 1))[chunk - chunk[0]]  # one contiguous read
                batch = np.stack(list(mapped(perturbed, images, keys[start : start + batch_size])))
                with predicting:  # one interpreter, shared by the shards under way
                    parts.append(adapter.predict_batch(batch))
            progress.update(shard.n_items)
        logits = np.concatenate(parts) if parts else np.zeros((0, n_classes), np.float32)
        attrs = {"model_signature": adapter.signature().hex, "forward_passes": len(rows)}
        return ShardContent(prediction_columns(keys, logits), attrs, PREDICTION_VALUES)

    return compute


@dataclass(frozen=True)
class CellResult:
    kind: str
    severity: int
    accuracy: float
    error: float
    flip_rate: float  # share of items whose label differs from the clean prediction


def grid_results(build: GridBuild, raw_dir: Path, labels: tuple[str, ...]) -> tuple[float, list[CellResult]]:
    """Clean accuracy on the split and one result per cell, all over the same items."""
    items = read_items(raw_dir)
    y_true = label_indices(list(items.sample_name[build.split_rows]), labels, build.model)
    y_clean = build.clean.column("label")[build.split_rows]
    results = []
    for name, cell_build in build.cells.items():
        layer = Layer.open(Path(cell_build.record["layer"]), kind=PREDICTIONS_KIND)
        items.check_aligned(layer, build.split_rows)
        y_cell = layer.column("label")
        kind, severity = name.rsplit("-", 1)
        accuracy = float(np.mean(y_cell == y_true))
        results.append(CellResult(kind, int(severity), accuracy, 1.0 - accuracy, float(np.mean(y_cell != y_clean))))
    return float(np.mean(y_clean == y_true)), results
