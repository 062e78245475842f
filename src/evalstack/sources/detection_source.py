"""The detection profile's `fetch:` section → the COCO raw layer, from a COCO JSON or a YOLO dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from evalstack.core.layers import LayerIndex
from evalstack.sources.coco import CocoFetchConfig, CocoSplit, ImageFetchOptions, fetch_coco_layer
from evalstack.sources.yolo_dataset import YoloFetchConfig, fetch_yolo_layer


def detection_fetch_config(fetch: Mapping[str, Any]) -> CocoFetchConfig | YoloFetchConfig:
    """`format: coco` (default) with `splits: {split: {annotations, images}}`, or `format: yolo` with
    `data: data.yaml` and `splits: [val]`; the shared image options (shard_size, max_pixels, …) either way."""
    options = {"shard_size": int(fetch["shard_size"]), "max_pixels": int(fetch["max_pixels"]),
               "max_bytes": int(fetch.get("max_bytes", ImageFetchOptions.max_bytes)),
               "on_error": str(fetch.get("on_error", "fail"))}
    if fetch.get("format", "coco") == "yolo":
        return YoloFetchConfig(data=str(fetch["data"]), splits=tuple(fetch["splits"]), **options)
    return CocoFetchConfig({name: CocoSplit(**entry) for name, entry in fetch["splits"].items()}, **options)


def fetch_detection_layer(fetch: Mapping[str, Any], out_dir: Path) -> LayerIndex:
    config = detection_fetch_config(fetch)
    if isinstance(config, YoloFetchConfig):
        return fetch_yolo_layer(config, out_dir)
    return fetch_coco_layer(config, out_dir)
