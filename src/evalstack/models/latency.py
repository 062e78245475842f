"""Latency of a model as measured during `infer` (ms per item at the infer batch size).

Kept next to, not inside, the predictions layer: a measurement differs on every
run, and the layer must stay byte-identical for identical inputs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalstack.core.atomic import atomic_write_bytes

if TYPE_CHECKING:  # compare reads latencies without importing the adapters
    from evalstack.models.adapters.base import ModelAdapter


def latency_record(adapter: ModelAdapter, batch_size: int) -> dict[str, Any]:
    passes = adapter.forward_passes
    return {
        "ms_per_item": round(1000 * adapter.forward_seconds / passes, 4) if passes else None,
        "timed_items": passes,  # items this run pushed through the model (a sample when all were reused)
        "batch_size": batch_size,
        "framework": adapter.framework,
    }


def ensure_timed(adapter: ModelAdapter, preprocessed_dir: Path, batch_size: int) -> None:
    """Time one batch when every shard was reused from the store, so latency is always measured.

    These passes only time the model; they are not predictions and are not counted in the layer.
    """
    if adapter.forward_passes:
        return
    from evalstack.core.layers import Layer  # a local import keeps this module light for readers of records

    layer = Layer.open(preprocessed_dir)
    for batch in layer.iter_batches(["x"], batch_size):
        adapter.predict_batch(batch["x"])
        return


def write_latency(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def read_latency(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None
