"""Post-processing from cache: candidates layer → detections layer, with no forward pass.

`confidence_threshold`, `max_detections` and class-wise NMS at `nms_iou` are
applied to each image's stored candidates, and the kept boxes are mapped back to
the original image (COCO xywh; a box wholly in the letterbox padding is dropped).
The detections layer is keyed by the candidates layer's key + these three params +
this code, and its shards go through the shard store: toggling a param back
restores the old result. It works the same on the clean candidates and on every
corruption-grid cell.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from evalstack.cache.incremental import DerivedLayerSpec, LayerBuild, ShardContent, build_derived_layer
from evalstack.cache.shardstore import ShardStore
from evalstack.core.fingerprint import code_part
from evalstack.core.keys import Key
from evalstack.core.kinds import DETECTIONS_KIND
from evalstack.core.layers import ShardInfo
from evalstack.core.ragged import counts_of, offsets_for
from evalstack.detection.boxes import Candidates, Detections, nms_sorted_batch, xyxy_to_xywh
from evalstack.detection.candidates import CandidateTable, open_candidates, read_candidate_shard
from evalstack.detection.decoding import CandidateBound, PostProcess
from evalstack.detection.layer import LAYOUT_VERSION, DetectionTable, detection_shard
from evalstack.detection.styles import (
    CAP_THEN_NMS,
    NMS_THEN_CAP,
    StyleRecord,
    check_cut,
    check_style_covers,
    frozen_rows,
    map_boxes,
    nms_then_cap_rows,
)
from evalstack.preprocess.letterbox import Placement


def detections_key(candidates: Key, post: PostProcess) -> Key:
    """The detections layer's key: what its candidates were built from, the post-processing params, this code."""
    return Key("detections", {"candidates": dict(candidates.parts), "postprocess": asdict(post),
                              "code": code_part(__name__)})


def to_original(found: Detections, place: Placement) -> Detections:
    """Model-input xyxy → COCO xywh of the original image; boxes with no pixels left after clipping are dropped."""
    boxes = xyxy_to_xywh(place.to_original(found.boxes))
    keep = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    return Detections(boxes[keep].astype(np.float32), found.labels[keep], found.scores[keep])


def postprocess_table(table: CandidateTable, post: PostProcess, style: StyleRecord = StyleRecord(),
                      model: str = "?", bound: CandidateBound | None = None) -> DetectionTable:
    """`postprocess` + `to_original` for every image of a shard, in the layer's post-processing style.
    cap_then_nms: threshold, cap and the mapping run on the whole shard at once (the same float64 operations
    per box), NMS per image where two or more boxes remain. nms_then_cap and frozen: per image (module styles)."""
    n_images = len(table)
    counts = counts_of(table.offsets, len(table.scores))
    if style.style == CAP_THEN_NMS:
        above = np.concatenate([[0], np.cumsum(table.scores >= post.confidence_threshold)])
        ends = np.append(table.offsets[1:], len(table.scores)) if n_images else table.offsets
        # candidates are sorted by score per image: the ones above the threshold are a prefix
        take = np.minimum(above[ends] - above[table.offsets], post.max_detections)
        rows = _nms_rows(table, take, post.nms_iou)
        model_boxes = table.boxes[rows]
    else:
        rows, model_boxes = _model_rows(table, post, style, model, bound or CandidateBound())
    image = np.repeat(np.arange(n_images), counts)[rows]
    place = {name: values[image] for name, values in table.placement.items()}
    scale = np.stack([place["scale_x"], place["scale_y"], place["scale_x"], place["scale_y"]], axis=1)
    pad = np.stack([place["pad_x"], place["pad_y"], place["pad_x"], place["pad_y"]], axis=1)
    limits = np.stack([place["width"], place["height"], place["width"], place["height"]], axis=1)
    boxes = xyxy_to_xywh(np.clip((model_boxes - pad) / scale, 0.0, limits))  # = Placement.to_original
    valid = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)  # a box wholly in the letterbox padding has no pixels left
    valid &= table.labels[rows] >= 0  # a background-slot box (torchvision label 0) took its part in NMS and the cap
    return DetectionTable(
        item_keys=table.item_keys, ids=table.ids, splits=table.splits,
        offsets=offsets_for(np.bincount(image[valid], minlength=n_images)),
        bboxes=boxes[valid].astype(np.float32), labels=table.labels[rows][valid].astype(np.int64),
        scores=table.scores[rows][valid].astype(np.float32),
    )


def _model_rows(table: CandidateTable, post: PostProcess, style: StyleRecord, model: str,
                bound: CandidateBound) -> tuple[np.ndarray, np.ndarray]:
    """(flat rows kept, their boxes in model-input pixels) of an nms_then_cap or frozen layer, image by image."""
    rows, boxes = [np.zeros(0, np.int64)], [np.zeros((0, 4))]
    for image, start in enumerate(table.offsets.tolist()):
        found = table.candidates(image)
        if style.style == NMS_THEN_CAP:
            check_cut(found, bound, post, model, table.ids[image])
            kept = nms_then_cap_rows(found, post, style)
        else:
            kept = frozen_rows(found, post)
        rows.append(start + kept)
        boxes.append(map_boxes(found.boxes[kept], style))
    return np.concatenate(rows), np.concatenate(boxes)


def model_space_detections(found: Candidates, post: PostProcess, style: StyleRecord, model: str = "?",
                           bound: CandidateBound | None = None) -> Detections:
    """One image's detections, xyxy in model-input pixels, from its stored candidates in any style: what the
    model configured with `post` returns (the adapters' detect_batch and the tests compare with it)."""
    if style.style == CAP_THEN_NMS:
        from evalstack.detection.decoding import postprocess

        return postprocess(found, post)
    if style.style == NMS_THEN_CAP:
        check_cut(found, bound or CandidateBound(), post, model, "?")
        kept = nms_then_cap_rows(found, post, style)
    else:
        kept = frozen_rows(found, post)
    return Detections(map_boxes(found.boxes[kept], style).astype(np.float32), found.labels[kept].astype(np.int64),
                      found.scores[kept].astype(np.float32))


def _nms_rows(table: CandidateTable, take: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Flat rows NMS keeps: each image's first take[i] candidates (score order). Images go through NMS in
    padded batches of similar size (up to 2, 4, 8, … boxes), so the pairwise IoUs cost about Σ take²."""
    kept: list[np.ndarray | None] = [None] * len(take)
    for image in np.flatnonzero(take == 1):
        kept[image] = np.zeros(1, np.int64)
    width = 2
    while width // 2 < (take.max() if len(take) else 0):
        images = np.flatnonzero((take > width // 2) & (take <= width))
        if len(images):
            index = table.offsets[images][:, None] + np.arange(width)[None, :]
            real = np.arange(width)[None, :] < take[images][:, None]
            index = np.where(real, index, table.offsets[images][:, None])  # padding rows: never visited
            labels = np.where(real, table.labels[index], -1)
            for image, keep in zip(images, nms_sorted_batch(table.boxes[index], labels, take[images], iou_threshold)):
                kept[image] = keep
        width *= 2
    rows = [start + keep for start, keep in zip(table.offsets.tolist(), kept) if keep is not None]
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def detections_stats(candidates_stats: dict[str, Any], tensor_shards: list[str | None]) -> dict[str, Any]:
    """The seed's metadata, the forward passes behind these detections (recorded by infer, not run here),
    and the letterboxed shards the candidates were computed from (CacheReader's `tensors=` check)."""
    return {
        "tensor_shards": tensor_shards,
        "layout": LAYOUT_VERSION, "model_name": candidates_stats.get("model_name"),
        "split": ",".join(candidates_stats.get("splits", [])), "model_hash": candidates_stats.get("model_hash"),
        "num_images": candidates_stats.get("num_images"),
        "forward_passes": candidates_stats.get("forward_passes", 0),
        "forward_passes_by_split": candidates_stats.get("forward_passes_by_split", {}),
        **({"perturbation": candidates_stats["perturbation"]} if "perturbation" in candidates_stats else {}),
    }


def postprocess_layer(candidates_dir: Path, out_dir: Path, post: PostProcess, store: ShardStore | None = None,
                      label: str = "postprocess") -> LayerBuild:
    """One detections shard per candidates shard; 0 forward passes, shards the store holds are reused."""
    source = open_candidates(candidates_dir)
    stats = source.index.stats
    style, bound, model = StyleRecord.from_stats(stats), CandidateBound(**stats["candidates"]), str(stats.get("model_name"))
    check_style_covers(style, bound, post, model)  # the style the candidates were made for, never another
    key = detections_key(source.key, post)
    labels = {"candidates": "model and pipeline", "postprocess": "post-processing", "code": "code"}
    stats = detections_stats(stats, [shard.upstream for shard in source.shards])
    spec = DerivedLayerSpec(DETECTIONS_KIND, key, label, labels, "items_postprocessed", stats=stats)

    def compute(shard: ShardInfo, path: Path, progress: tqdm) -> ShardContent:
        with h5py.File(path, "r") as handle:
            table = read_candidate_shard(handle, path, source.directory)
        columns, flat, attrs = detection_shard(postprocess_table(table, post, style, model, bound))
        progress.update(shard.n_items)
        return ShardContent(columns, {**attrs, "forward_passes": 0}, flat=flat)

    return build_derived_layer(source, out_dir, spec, compute, store)
