"""The infer stage: preprocessed layer + model → predictions layer, shard by shard through the store."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from tqdm import tqdm

from evalstack.cache.executors import DaskExecutor, Executor, loaded_in_worker
from evalstack.cache.incremental import DerivedLayerSpec, LayerBuild, ShardContent, build_derived_layer
from evalstack.cache.shardstore import ShardStore
from evalstack.config import ModelSpec
from evalstack.core.fingerprint import code_part, defining_module
from evalstack.core.kinds import PREDICTIONS_KIND, PREPROCESSED_KIND
from evalstack.core.layers import ITEM_KEY, Layer, ShardColumns, ShardInfo
from evalstack.models.adapters.base import ModelAdapter
from evalstack.models.predictions import PREDICTION_VALUES, prediction_columns, predictions_key


def infer_layer(
    preprocessed_dir: Path,
    out_dir: Path,
    adapter: ModelAdapter,
    batch_size: int = 32,
    store: ShardStore | None = None,
    executor: Executor | None = None,
) -> LayerBuild:
    """One predictions shard per preprocessed shard; streams in batches; stored shards are reused.

    Batches start at each shard's first item, so a shard's predictions do not depend
    on which other shards were computed in the same run (nor on which worker ran them).
    """
    source = Layer.open(preprocessed_dir, kind=PREPROCESSED_KIND)
    key = predictions_key(adapter.signature(), source.key, inference_code(type(adapter)), batch_size)
    labels = {"model": f"model {adapter.spec.name}", "pipeline": f"pipeline {adapter.spec.pipeline}", "code": "code",
              "batch_size": "infer.batch_size"}
    spec = DerivedLayerSpec(PREDICTIONS_KIND, key, f"model {adapter.spec.name}", labels, "forward_passes")
    if isinstance(executor, DaskExecutor):  # workers load the model themselves: interpreters do not pickle
        # The weights by absolute path (a worker of an existing cluster runs in its own directory), pinned to
        # the bytes the key names: a file replaced while the stage runs makes the worker's adapter refuse it,
        # never predict with other weights under this key (the shared store would spread them).
        model = replace(adapter.spec, file=adapter.spec.file.absolute(), sha256=adapter.weights_sha256)
        compute: Callable = PredictInWorker(type(adapter), model, batch_size, adapter)
    else:
        compute = partial(predict_shard, adapter, batch_size)
    return build_derived_layer(source, out_dir, spec, compute, store, executor)


def inference_code(adapter_class: type) -> dict[str, str]:
    """The code that turns tensors into predictions: this stage and the adapter's module (a user's own too)."""
    return code_part(defining_module(adapter_class), __name__)


def predict_shard(adapter: ModelAdapter, batch_size: int, shard: ShardInfo, path: Path, progress: tqdm) -> ShardContent:
    with ShardColumns(path, shard) as reader:  # tensors straight from the file (the index locates them)
        keys = reader.read(ITEM_KEY, decode=False)  # fixed width, as the preprocessed layer holds them
        parts = []
        for start in range(0, shard.n_items, batch_size):
            batch = reader.read("x", slice(start, start + batch_size))
            parts.append(adapter.predict_batch(batch))
            progress.update(len(batch))
    logits = np.concatenate(parts) if parts else np.zeros((0, len(adapter.spec.labels)), np.float32)
    attrs = {"model_signature": adapter.signature().hex, "forward_passes": shard.n_items}
    return ShardContent(prediction_columns(keys, logits), attrs, PREDICTION_VALUES)


@dataclass(frozen=True)
class PredictInWorker:
    """`predict_shard` with the adapter built from its class and spec, once per worker process. A shard
    computed in the stage's own process (the Dask executor runs a lone shard there) uses `local`, the
    stage's adapter, which is never pickled: interpreters do not travel."""

    adapter_class: type[ModelAdapter]
    spec: ModelSpec
    batch_size: int
    local: ModelAdapter | None = field(default=None, compare=False)

    def __call__(self, shard: ShardInfo, path: Path, progress: tqdm) -> ShardContent:
        adapter = self.local if self.local is not None else loaded_in_worker(self.adapter_class, self.spec)
        return predict_shard(adapter, self.batch_size, shard, path, progress)

    def files(self) -> dict[str, Path]:
        """The weights: with workers that share only the object store they travel as a blob (storejobs.py)."""
        return {"weights": self.spec.file}

    def with_files(self, files: Mapping[str, Path]) -> PredictInWorker:
        return replace(self, spec=replace(self.spec, file=files["weights"]))

    def __getstate__(self) -> dict:
        return {"adapter_class": self.adapter_class, "spec": self.spec, "batch_size": self.batch_size, "local": None}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
