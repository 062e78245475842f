"""The infer stage: preprocessed layer + model → predictions layer.

Per item it stores what PAD's `nn_predict` reports — label (argmax), probability
(softmax of the winner) and energy (logsumexp of the logits) — plus the logits,
so later metrics never need another forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
from tqdm import tqdm

from evalstack.adapters.base import ModelAdapter, ModelSpec
from evalstack.executor import DaskExecutor, Executor, loaded_in_worker
from evalstack.incremental import DerivedLayerSpec, LayerBuild, ShardContent, build_derived_layer
from evalstack.keys import Key
from evalstack.pipelines import PREPROCESSED_KIND
from evalstack.shardstore import ShardStore
from evalstack.store import ITEM_KEY, Layer, ShardInfo, read_column

PREDICTIONS_KIND = "predictions"
PREDICTION_VALUES = ("label", "probability", "energy", "logits")  # hashed per item for `verify`


def predictions_key(model_signature: Key, pipeline_key: Key) -> Key:
    return Key("predictions", {"model": dict(model_signature.parts), "pipeline": dict(pipeline_key.parts)})


def prediction_columns(item_keys: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    # Imported here: scipy costs ~0.2 s, and evaluate, which imports this module, never predicts.
    from scipy.special import logsumexp, softmax

    probabilities = softmax(logits.astype(np.float64), axis=1)
    labels = np.argmax(logits, axis=1).astype(np.int64)
    return {
        ITEM_KEY: item_keys,
        "label": labels,
        "probability": probabilities[np.arange(len(labels)), labels].astype(np.float32),
        "energy": logsumexp(logits.astype(np.float64), axis=1).astype(np.float32),
        "logits": logits.astype(np.float32),
    }


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
    key = predictions_key(adapter.signature(), source.key)
    labels = {"model": f"model {adapter.spec.name}", "pipeline": f"pipeline {adapter.spec.pipeline}"}
    spec = DerivedLayerSpec(PREDICTIONS_KIND, key, f"model {adapter.spec.name}", labels, "forward_passes")
    if isinstance(executor, DaskExecutor):  # workers load the model themselves: interpreters do not pickle
        compute: Callable = PredictInWorker(type(adapter), adapter.spec, batch_size)
    else:
        compute = partial(predict_shard, adapter, batch_size)
    return build_derived_layer(source, out_dir, spec, compute, store, executor)


def predict_shard(adapter: ModelAdapter, batch_size: int, shard: ShardInfo, path: Path, progress: tqdm) -> ShardContent:
    with h5py.File(path, "r") as handle:
        keys = read_column(handle, ITEM_KEY)
        parts = []
        for start in range(0, shard.n_items, batch_size):
            batch = read_column(handle, "x", slice(start, start + batch_size))
            parts.append(adapter.predict_batch(batch))
            progress.update(len(batch))
    logits = np.concatenate(parts) if parts else np.zeros((0, len(adapter.spec.labels)), np.float32)
    attrs = {"model_signature": adapter.signature().hex, "forward_passes": shard.n_items}
    return ShardContent(prediction_columns(keys, logits), attrs, PREDICTION_VALUES)


@dataclass(frozen=True)
class PredictInWorker:
    """`predict_shard` with the adapter built from its class and spec, once per worker process."""

    adapter_class: type[ModelAdapter]
    spec: ModelSpec
    batch_size: int

    def __call__(self, shard: ShardInfo, path: Path, progress: tqdm) -> ShardContent:
        return predict_shard(loaded_in_worker(self.adapter_class, self.spec), self.batch_size, shard, path, progress)


def open_predictions(directory: Path, model_signature: Key, pipeline_key: Key, model_name: str) -> Layer:
    """The predictions layer, or CacheStaleError saying what changed and how to rebuild."""
    layer = Layer.open(directory, kind=PREDICTIONS_KIND)
    layer.expect_key(predictions_key(model_signature, pipeline_key), f"dvc repro infer@{model_name}")
    return layer
