"""The detection infer stage: letterboxed layer + detector → detections layer.

`detect_arrays` is the whole per-batch computation (forward pass, decoding,
threshold, NMS, mapping back to original pixels) on plain arrays, so a later
stage can run it on perturbed copies of the cached tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from evalstack.adapters.detection import DetectionAdapter
from evalstack.boxes import Detections, xyxy_to_xywh
from evalstack.detections_layer import DETECTIONS_KIND, DetectionTable, layer_stats, write_detections_shard
from evalstack.inference import predictions_key
from evalstack.letterbox import PLACEMENT_COLUMNS, Placement, placements
from evalstack.pipelines import PREPROCESSED_KIND
from evalstack.store import ITEM_KEY, Layer, LayerIndex, LayerWriter, read_column


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
    preprocessed_dir: Path, out_dir: Path, adapter: DetectionAdapter, batch_size: int = 32
) -> LayerIndex:
    """One detections shard per preprocessed shard; every image gets a row, with or without detections."""
    source = Layer.open(preprocessed_dir, kind=PREPROCESSED_KIND)
    writer = LayerWriter(out_dir, DETECTIONS_KIND, predictions_key(adapter.signature(), source.key))
    total, splits = 0, set()
    with tqdm(total=len(source), desc=f"detect {adapter.spec.name}", unit="image") as progress:
        for shard in source.shards:
            with source.open_shard(shard) as handle:
                columns = {name: read_column(handle, name) for name in (ITEM_KEY, "id", "split", *PLACEMENT_COLUMNS)}
                placed = placements(columns)
                found: list[Detections] = []
                for start in range(0, shard.n_items, batch_size):
                    stop = min(start + batch_size, shard.n_items)
                    found.extend(detect_arrays(adapter, handle["x"][start:stop], placed[start:stop]))
                    progress.update(stop - start)
            table = DetectionTable.from_detections(columns[ITEM_KEY], columns["id"], columns["split"].tolist(), found)
            attrs = {"model_signature": adapter.signature().hex, "forward_passes": shard.n_items}
            write_detections_shard(writer, shard.name, table, attrs=attrs, upstream=shard.sha256)
            total += sum(len(d) for d in found)
            splits.update(columns["split"].tolist())
    writer.stats = {
        **layer_stats(adapter.spec.name, ",".join(sorted(splits)), adapter.weights_sha256, len(source), total),
        "forward_passes": adapter.forward_passes,
    }
    return writer.finish()
