"""YOLO-format (Ultralytics) detection datasets, stored as the same COCO raw layer the COCO source writes.

A dataset is a `data.yaml` (`path`, `train`/`val`/`test`, `names`), a folder of images per split and a
`.txt` per image in the parallel labels folder. Conventions, and where they differ from Ultralytics:

- The dataset root is `path`; a relative `path` is taken relative to the yaml's folder (Ultralytics takes
  it relative to its own settings' `datasets_dir`, which no other machine shares); no `path` → the yaml's
  folder. A split is one folder of images (searched recursively) relative to the root; a list of folders
  or a `.txt` list of images is refused.
- Labels: Ultralytics' rule — the last `/images/` in an image's path becomes `/labels/`, the suffix
  `.txt`. No label file, or an empty one, means the image has no objects.
- A line is `class cx cy w h` normalised to 0–1, or a polygon `class x1 y1 x2 y2 x3 y3 …`, which
  becomes its bounding box (what Ultralytics does for a detection dataset). A file mixing the two is
  refused: Ultralytics would read its box lines as two-point polygons.
- Categories: class index i → COCO category id i + 1 (COCO ids start at 1), named by `names`.
- Image ids: the split's image files sorted by relative path, numbered 1..N (COCO ids are integers);
  annotation ids: 1..M per split, in image then line order over the images read (an image skipped under
  `on_error: skip` takes none; pycocotools' figures do not depend on annotation ids).
- Width and height come from the image itself (read once, decoded under `max_pixels`); boxes become
  COCO xywh pixels as float64: x = (cx − w/2)·W, y = (cy − h/2)·H, w·W, h·H; area = w·h; iscrowd 0.
  Exact duplicate lines are kept (Ultralytics drops them): a COCO file of the same boxes keeps them too.

Images are read one at a time while the layer is written; only their paths are listed up front.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from evalstack.core.keys import Key
from evalstack.core.layers import LayerIndex
from evalstack.sources.coco import (
    CocoImage,
    DetectionLayerSpec,
    GroundTruth,
    ImageFetchOptions,
    UnmatchableBox,
    capped_reader,
    check_box_in_image,
    read_checked_image,
    skip_or_raise,
    write_detection_layer,
)
from evalstack.sources.registry import SourceError, read_capped

# Ultralytics' image suffixes that the accepted formats (sources/images.py IMAGE_FORMATS) cover
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
MAX_YAML_BYTES = 1 << 20


@dataclass(frozen=True)
class YoloFetchConfig(ImageFetchOptions):
    data: str  # the data.yaml
    splits: tuple[str, ...] = ("val",)  # which of its splits to fetch

    def layer_key(self) -> Key:
        # the yaml's location and the splits decide which files are read; their content is the images and labels
        return Key("raw", {"source": "yolo", "data": self.data, "splits": sorted(self.splits), **self.guard_key()})


@dataclass(frozen=True)
class YoloSplit:
    name: str
    folder: Path
    images: list[Path]  # sorted by path relative to folder; image id = position + 1


@dataclass(frozen=True)
class YoloDataset:
    categories: list[dict[str, Any]]
    splits: list[YoloSplit]


def label_path(image: Path) -> Path:
    """Ultralytics' `img2label_paths`: the last /images/ becomes /labels/, the suffix .txt."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(labels.join(str(image).rsplit(images, 1)).rsplit(".", 1)[0] + ".txt")


def _categories(names: Any, nc: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise SourceError(f"{where}: names {names!r} is not a list or an {{index: name}} map")
    # Ultralytics reads the keys with int(): `"0": a` and `0: a` are the same class
    names = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in names.items()}
    if sorted(names) != list(range(len(names))):
        raise SourceError(f"{where}: names keys {sorted(names, key=str)} are not the class indices 0..{len(names) - 1}")
    if nc is not None and nc != len(names):
        raise SourceError(f"{where}: nc is {nc!r} but names lists {len(names)} classes")
    labels = [str(names[i]) for i in range(len(names))]
    if len(set(labels)) != len(labels):
        raise SourceError(f"{where}: names are not unique ({labels})")
    return [{"id": index + 1, "name": name, "supercategory": ""} for index, name in enumerate(labels)]


def _split(document: dict[str, Any], name: str, root: Path, where: str) -> YoloSplit:
    folder = _split_folder(document, name, root, where)
    images = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                    key=lambda p: p.relative_to(folder).as_posix())
    if not images:
        raise SourceError(f"{where}: {name}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return YoloSplit(name, folder, images)


def _split_folder(document: dict[str, Any], name: str, root: Path, where: str) -> Path:
    if name not in document or document[name] is None:
        present = [key for key in ("train", "val", "test") if document.get(key) is not None]
        raise SourceError(f"{where}: no split {name!r} (it has {present}); fix fetch.splits")
    entry = document[name]
    if not isinstance(entry, str):
        raise SourceError(f"{where}: {name}: {entry!r} is not one folder of images (lists are not supported)")
    folder = root / entry
    if folder.suffix == ".txt":
        raise SourceError(f"{where}: {name}: {folder} is a list of images; point {name} at a folder of images")
    if not folder.is_dir():
        raise SourceError(f"{where}: {name}: folder {folder} not found")
    return folder


def read_data_yaml(data: str, splits: tuple[str, ...]) -> YoloDataset:
    """Categories and the listed image paths of the requested splits (sorted by name)."""
    path, document, root = _data_yaml(data, splits)
    return YoloDataset(_categories(document["names"], document.get("nc"), str(path)),
                       [_split(document, name, root, str(path)) for name in sorted(set(splits))])


def split_folders(data: str, splits: tuple[str, ...]) -> dict[str, Path]:
    """The image folder of each requested split, without listing its images."""
    path, document, root = _data_yaml(data, splits)
    return {name: _split_folder(document, name, root, str(path)) for name in sorted(set(splits))}


def _data_yaml(data: str, splits: tuple[str, ...]) -> tuple[Path, dict[str, Any], Path]:
    """(the data.yaml's path, its document, the folder its split paths are relative to), checked."""
    path = Path(data).resolve()
    try:
        document = yaml.safe_load(read_capped(path, MAX_YAML_BYTES, "fetch.data"))
    except yaml.YAMLError as error:
        raise SourceError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(document, dict) or "names" not in document:
        raise SourceError(f"{path}: not a YOLO data.yaml (needs names and the split folders)")
    if document.get("path") is not None and not isinstance(document["path"], str):
        raise SourceError(f"{path}: path {document['path']!r} is not a folder path")
    root = path.parent / document["path"] if document.get("path") else path.parent
    if not splits:
        raise SourceError(f"{path}: fetch.splits names no split")
    return path, document, root


@dataclass(frozen=True)
class LabelBox:
    line: int
    category: int  # COCO category id
    bbox: list[float]  # COCO xywh, pixels


def _values(tokens: list[str], where: str) -> list[float]:
    try:
        values = [float(token) for token in tokens]
    except ValueError:
        raise SourceError(f"{where}: {' '.join(tokens)!r} holds a value that is not a number") from None
    if not all(math.isfinite(v) for v in values):
        raise SourceError(f"{where}: {' '.join(tokens)!r} holds a value that is not finite")
    return values


def _label_box(values: list[float], width: int, height: int, n_classes: int, where: str) -> tuple[int, list[float]]:
    index, coords = values[0], values[1:]
    if not index.is_integer() or not 0 <= index < n_classes:
        raise SourceError(f"{where}: class {values[0]:g} is not a class index 0..{n_classes - 1} of names")
    if not all(0 <= v <= 1 for v in coords):
        raise SourceError(f"{where}: coordinates {coords} are not normalised to 0–1")
    if len(coords) == 4:
        cx, cy, w, h = coords
        return int(index) + 1, [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
    xs, ys = coords[0::2], coords[1::2]
    return int(index) + 1, [min(xs) * width, min(ys) * height, (max(xs) - min(xs)) * width,
                            (max(ys) - min(ys)) * height]


def read_labels(path: Path, width: int, height: int, n_classes: int, max_bytes: int) -> list[LabelBox]:
    """The boxes of one label file (none when it does not exist); a malformed line is an error naming
    the file and the line."""
    if not path.exists():
        return []
    try:
        text = read_capped(path, max_bytes, "label file").decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(f"{path}: not a UTF-8 text file") from None
    boxes, kinds = [], set()
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}:{number}"
        if len(tokens) != 5 and (len(tokens) < 7 or len(tokens) % 2 == 0):
            raise SourceError(f"{where}: {len(tokens)} values; expected `class cx cy w h` (5) or a polygon "
                              f"`class x1 y1 x2 y2 x3 y3 …` (an odd number, at least 7)")
        kinds.add("box" if len(tokens) == 5 else "polygon")
        if len(kinds) > 1:
            raise SourceError(f"{where}: the file mixes boxes and polygons (Ultralytics would read its boxes as "
                              f"polygons); write one kind per file")
        category, bbox = _label_box(_values(tokens, where), width, height, n_classes, where)
        boxes.append(LabelBox(number, category, bbox))
    return boxes


def _ground_truth(boxes: list[LabelBox], ann_ids: list[int]) -> GroundTruth:
    bbox = np.asarray([b.bbox for b in boxes], np.float64).reshape(-1, 4)
    return GroundTruth(bbox, np.asarray([b.category for b in boxes], np.int64), bbox[:, 2] * bbox[:, 3],
                       np.zeros(len(boxes), np.int64), np.asarray(ann_ids, np.int64))


def _matchable(image: CocoImage, boxes: list[LabelBox], first_id: int, label_file: Path, on_error: str,
               dropped: list[dict[str, Any]]) -> GroundTruth:
    """The image's ground truth: its boxes numbered from `first_id` in line order, less (under skip) those
    no detection can match, which go to `dropped`."""
    kept, ids = [], []
    for ann_id, box in enumerate(boxes, start=first_id):
        what = f"{label_file}:{box.line} ({image.split} image {image.image_id}, {image.file_name})"
        try:
            check_box_in_image(box.bbox, image.width, image.height, what)
        except UnmatchableBox as error:
            if on_error != "skip":
                raise SourceError(f"{error} (fetch.on_error: skip drops such boxes and lists them)") from None
            dropped.append({"split": image.split, "image_id": image.image_id, "annotation_id": ann_id,
                            "cause": str(error)})
            continue
        kept.append(box)
        ids.append(ann_id)
    return _ground_truth(kept, ids)


def _yolo_items(dataset: YoloDataset, config: YoloFetchConfig, dropped: list[dict[str, Any]],
                skipped: list[dict[str, Any]]) -> Iterator[tuple[CocoImage, bytes]]:
    read = capped_reader(config.max_bytes)
    for split in dataset.splits:
        next_id = 1
        for image_id, path in enumerate(split.images, start=1):
            file_name = path.relative_to(split.folder).as_posix()
            what = f"{split.name} image {image_id} ({file_name})"
            labels = label_path(path)
            try:
                data, width, height = read_checked_image(path.as_uri(), what, config, read)
                boxes = read_labels(labels, width, height, len(dataset.categories), config.max_bytes)
            except SourceError as error:
                skip_or_raise(error, config.on_error, {"split": split.name, "image_id": image_id,
                                                       "file_name": file_name, "path": str(path)}, skipped)
                continue
            image = CocoImage(split.name, image_id, file_name, width, height, _ground_truth([], []), path.as_uri())
            truth = _matchable(image, boxes, next_id, labels, config.on_error, dropped)
            next_id += len(boxes)
            yield replace(image, truth=truth), data


def fetch_yolo_layer(config: YoloFetchConfig, out_dir: Path) -> LayerIndex:
    """The raw layer of a YOLO dataset: the same layer fetch_coco_layer writes, images in (split, id) order."""
    dataset = read_data_yaml(config.data, config.splits)
    dropped: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    spec = DetectionLayerSpec(config.layer_key(), dataset.categories, config.shard_size,
                              sum(len(s.images) for s in dataset.splits), "fetch yolo")
    return write_detection_layer(_yolo_items(dataset, config, dropped, skipped), spec, out_dir, dropped, skipped)
