"""The detection profile's `fetch:` section → the COCO raw layer, from a COCO JSON or a YOLO dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from evalstack.core.layers import LayerIndex
from evalstack.sources.coco import CocoFetchConfig, CocoSplit, ImageFetchOptions, fetch_coco_layer
from evalstack.sources.registry import local_path
from evalstack.sources.yolo_dataset import YoloFetchConfig, fetch_yolo_layer, label_path, split_folders


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


def detection_source_files(fetch: Mapping[str, Any]) -> list[tuple[str, Path]]:
    """What a detection fetch reads from this disk, which the fetch stage's deps must cover: each split's COCO
    JSON and image folder; a YOLO data.yaml, its split folders and their label folders (Ultralytics' layout)."""
    config = detection_fetch_config(fetch)
    if isinstance(config, YoloFetchConfig):
        found = [("the YOLO data.yaml", Path(config.data))]
        for name, folder in split_folders(config.data, config.splits).items():
            found += [(f"the {name} images", folder), (f"the {name} labels", label_path(folder / "image.png").parent)]
        return found
    found = []
    for name, split in sorted(config.splits.items()):
        found += [(f"the {name} annotations", local_path(split.annotations)),
                  (f"the {name} images", local_path(split.images))]
    return [(what, path) for what, path in found if path is not None]
