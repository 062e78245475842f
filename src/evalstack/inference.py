"""The infer stage: preprocessed layer + model → predictions layer.

Per item it stores what PAD's `nn_predict` reports — label (argmax), probability
(softmax of the winner) and energy (logsumexp of the logits) — plus the logits,
so later metrics never need another forward pass.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import logsumexp, softmax
from tqdm import tqdm

from evalstack.adapters.base import ModelAdapter
from evalstack.keys import Key
from evalstack.pipelines import PREPROCESSED_KIND
from evalstack.store import ITEM_KEY, Layer, LayerIndex, LayerWriter, read_column

PREDICTIONS_KIND = "predictions"


def predictions_key(model_signature: Key, pipeline_key: Key) -> Key:
    return Key("predictions", {"model": dict(model_signature.parts), "pipeline": dict(pipeline_key.parts)})


def prediction_columns(item_keys: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    probabilities = softmax(logits.astype(np.float64), axis=1)
    labels = np.argmax(logits, axis=1).astype(np.int64)
    return {
        ITEM_KEY: item_keys,
        "label": labels,
        "probability": probabilities[np.arange(len(labels)), labels].astype(np.float32),
        "energy": logsumexp(logits.astype(np.float64), axis=1).astype(np.float32),
        "logits": logits.astype(np.float32),
    }


def infer_layer(preprocessed_dir: Path, out_dir: Path, adapter: ModelAdapter, batch_size: int = 32) -> LayerIndex:
    """One predictions shard per preprocessed shard; streams in batches."""
    source = Layer.open(preprocessed_dir, kind=PREPROCESSED_KIND)
    key = predictions_key(adapter.signature(), source.key)
    writer = LayerWriter(out_dir, PREDICTIONS_KIND, key)
    with tqdm(total=len(source), desc=f"infer {adapter.spec.name}", unit="card") as progress:
        for shard in source.shards:
            with source.open_shard(shard) as handle:
                keys = read_column(handle, ITEM_KEY)
                parts = []
                for start in range(0, shard.n_items, batch_size):
                    batch = handle["x"][start : start + batch_size]
                    parts.append(adapter.predict_batch(batch))
                    progress.update(len(batch))
            n_classes = len(adapter.spec.labels)
            logits = np.concatenate(parts) if parts else np.zeros((0, n_classes), np.float32)
            writer.add_shard(
                shard.name,
                prediction_columns(keys, logits),
                attrs={"model_signature": adapter.signature().hex, "forward_passes": shard.n_items},
                upstream=shard.sha256,
            )
    writer.stats = {"forward_passes": adapter.forward_passes}
    return writer.finish()


def open_predictions(directory: Path, model_signature: Key, pipeline_key: Key, model_name: str) -> Layer:
    """The predictions layer, or CacheStaleError saying what changed and how to rebuild."""
    layer = Layer.open(directory, kind=PREDICTIONS_KIND)
    layer.expect_key(predictions_key(model_signature, pipeline_key), f"dvc repro infer@{model_name}")
    return layer
