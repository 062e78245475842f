"""The detection infer stage: letterboxed layer + detector → detections layer.

`detect_arrays` is the whole per-batch computation (forward pass, decoding,
threshold, NMS, mapping back to original pixels) on plain arrays, so a later
stage can run it on perturbed copies of the cached tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
from tqdm import tqdm

from evalstack.cache.incremental import DerivedLayerSpec, LayerBuild, ShardContent, build_derived_layer
from evalstack.cache.shardstore import ShardStore
from evalstack.core.kinds import DETECTIONS_KIND, PREPROCESSED_KIND
from evalstack.core.layers import ITEM_KEY, Layer, ShardInfo, read_column
from evalstack.detection.adapter import DetectionAdapter
from evalstack.detection.boxes import Detections, xyxy_to_xywh
from evalstack.detection.layer import DetectionTable, detection_shard, layer_stats
from evalstack.models.predictions import predictions_key
from evalstack.preprocess.letterbox import PLACEMENT_COLUMNS, Placement, placements


def detect_arrays(adapter: DetectionAdapter, batch: np.ndarray, placed: Sequence[Placement]) -> list[Detections]:
    """Detections in COCO xywh of each original image, for model-ready arrays (N, H, W, 3)."""
    if len(batch) != len(placed):
        raise ValueError(f"{len(batch)} arrays but {len(placed)} placements")
    mapped = []
    for found, place in zip(adapter.detect_batch(batch), placed):
        boxes = xyxy_to_xywh(place.to_original(found.boxes))
        # A box lying wholly in the letterbox padding has no pixels left after clipping.
        keep = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        mapped.append(Detections(boxes[keep].astype(np.float32), found.labels[keep], found.scores[keep]))
    return mapped


def infer_detection_layer(
    preprocessed_dir: Path, out_dir: Path, adapter: DetectionAdapter, batch_size: int = 32,
    store: ShardStore | None = None,
) -> LayerBuild:
    """One detections shard per letterboxed shard, every image a row (with or without detections);
    shards the store holds are reused. Batches start at each shard's first item, so a shard's
    detections do not depend on which other shards were computed in the same run."""
    source = Layer.open(preprocessed_dir, kind=PREPROCESSED_KIND)
    key = predictions_key(adapter.signature(), source.key)
    labels = {"model": f"model {adapter.spec.name}", "pipeline": f"pipeline {adapter.spec.pipeline}"}
    splits = ",".join(sorted(set(source.column("split").tolist())))
    stats = layer_stats(adapter.spec.name, splits, adapter.weights_sha256, len(source))
    spec = DerivedLayerSpec(DETECTIONS_KIND, key, f"model {adapter.spec.name}", labels, "forward_passes", stats=stats)

    def compute(shard: ShardInfo, path: Path, progress: tqdm) -> ShardContent:
        with h5py.File(path, "r") as handle:
            columns = {name: read_column(handle, name) for name in (ITEM_KEY, "id", "split", *PLACEMENT_COLUMNS)}
            placed = placements(columns)
            found: list[Detections] = []
            for start in range(0, shard.n_items, batch_size):
                stop = min(start + batch_size, shard.n_items)
                found.extend(detect_arrays(adapter, read_column(handle, "x", slice(start, stop)), placed[start:stop]))
                progress.update(stop - start)
        table = DetectionTable.from_detections(columns[ITEM_KEY], columns["id"], columns["split"].tolist(), found)
        row_columns, flat, attrs = detection_shard(table)
        attrs.update(model_signature=adapter.signature().hex, forward_passes=shard.n_items)
        return ShardContent(row_columns, attrs, flat=flat)

    return build_derived_layer(source, out_dir, spec, compute, store)
