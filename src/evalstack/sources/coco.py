"""COCO-format source and the detection raw layer (encoded images + ground-truth boxes).

A split is an instances JSON (`images`, `annotations`, `categories`) plus the
location its `file_name`s are relative to. Every byte — the JSON and each
image — is read through one `read_bytes(url)` callable, so the same code reads
local files today and whatever transport the fetch machinery routes to it.

Ground truth is kept exactly as the JSON states it (float64 boxes and areas, per
image in document order, crowd flags, annotation ids), because pycocotools'
matching depends on all of it; the evaluate stage rebuilds the COCO document
from the layer and gets the same numbers as pycocotools on the original file.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import quote, unquote, urljoin, urlparse

import numpy as np
from tqdm import tqdm

from evalstack.core.keys import Key, sha256_bytes
from evalstack.core.kinds import RAW_KIND
from evalstack.core.layers import ITEM_KEY, Layer, LayerIndex, LayerWriter, read_attrs, read_column, shard_name
from evalstack.core.ragged import check_offsets, offsets_for, pack, unpack
from evalstack.sources.images import DEFAULT_MAX_PIXELS, check_image
from evalstack.sources.registry import DEFAULT_MAX_BYTES, SourceError, check_scheme, read_local, safe_name, to_url

ReadBytes = Callable[[str], bytes]
# raw layers of this shape: a YOLO dataset is stored as COCO (sources/yolo_dataset.py)
DETECTION_SOURCES = ("coco", "yolo")
GT_FLAT = ("gt_bbox", "gt_category", "gt_area", "gt_iscrowd", "gt_ann_id")


@dataclass(frozen=True)
class CocoSplit:
    annotations: str  # instances JSON: path or URL
    images: str  # folder or URL prefix that `file_name` is relative to


@dataclass(frozen=True, kw_only=True)
class ImageFetchOptions:
    """What every detection source applies to the images it fetches (COCO here, YOLO in yolo_dataset.py)."""

    shard_size: int = 256
    max_pixels: int = DEFAULT_MAX_PIXELS
    allowed_schemes: tuple[str, ...] = ("file",)
    max_bytes: int = DEFAULT_MAX_BYTES  # per image file, checked while reading
    # fail | skip: an unreadable image or a box no detection can match is an error, or left out and listed
    on_error: str = "fail"

    def __post_init__(self) -> None:
        if self.on_error not in ("fail", "skip"):
            raise SourceError(f"fetch.on_error {self.on_error!r} unknown; choose fail or skip")

    def guard_key(self) -> dict[str, Any]:
        """The layer-key parts every detection source shares. Under skip the image guards decide which
        images the layer holds, so they are part of the key; under fail they only refuse."""
        parts: dict[str, Any] = {"shard_size": self.shard_size, "on_error": self.on_error}
        if self.on_error == "skip":
            parts.update(max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        return parts


@dataclass(frozen=True)
class CocoFetchConfig(ImageFetchOptions):
    splits: Mapping[str, CocoSplit]
    max_annotation_bytes: int = field(default=1 << 30, kw_only=True)  # the instances JSON (train2017's is ~450 MB)

    def layer_key(self) -> Key:
        splits = {name: {"annotations": s.annotations, "images": s.images} for name, s in self.splits.items()}
        # on_error decides which boxes and images the layer holds: part of the key
        return Key("raw", {"source": "coco", "splits": splits, **self.guard_key()})


@dataclass(frozen=True)
class GroundTruth:
    """One image's annotations, in the order the JSON lists them."""

    bbox: np.ndarray  # (n, 4) float64, COCO xywh
    category: np.ndarray  # (n,) int64 category ids
    area: np.ndarray  # (n,) float64
    iscrowd: np.ndarray  # (n,) int64
    ann_id: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.category)


@dataclass(frozen=True)
class CocoImage:
    split: str
    image_id: int
    file_name: str
    width: int
    height: int
    truth: GroundTruth
    url: str = ""  # where to read it; machine-specific, so not stored


@dataclass
class CocoDataset:
    categories: list[dict[str, Any]]
    images: list[CocoImage] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)  # ground-truth boxes left out (on_error: skip)

    def category_ids(self, labels: tuple[str, ...], model: str) -> np.ndarray:
        """A model's label index → category id, matched by name (models and datasets number classes apart)."""
        by_name = {c["name"]: c["id"] for c in self.categories}
        unknown = [label for label in labels if label not in by_name]
        if unknown:
            raise SourceError(f"model {model}: labels {unknown} are not categories of the dataset ({sorted(by_name)})")
        return np.asarray([by_name[label] for label in labels], dtype=np.int64)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SourceError(f"{what}: {value!r} is not a finite number")
    return float(value)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SourceError(f"{what}: {value!r} is not an integer")
    return value


def _safe_relative(file_name: Any, what: str) -> str:
    if not isinstance(file_name, str) or not file_name or file_name.startswith("/"):
        raise SourceError(f"{what}: file_name {file_name!r} is not a relative path")
    for part in file_name.split("/"):
        safe_name(part, f"{what} file_name part")
    return file_name


# How far a box may reach past its image (pixels): COCO's own files hold boxes that overhang by a rounding
# error; one that lies wholly or largely outside can never be matched and would lower recall silently.
BOX_TOLERANCE = 1.0


class UnmatchableBox(SourceError):
    """A ground-truth box no detection can match: outside its image, or of zero area."""


def check_box_in_image(box: list[float], width: int, height: int, what: str) -> None:
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise UnmatchableBox(f"{what}: bbox {box} has zero area; no detection can match it")
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
        raise UnmatchableBox(f"{what}: bbox {box} lies outside its {width}×{height} image (by more than "
                             f"{BOX_TOLERANCE:g} px); no detection can match it")


def _annotation_row(ann: Mapping[str, Any], images: Mapping[int, Any], category_ids: set[int], where: str):
    what = f"{where} annotation {ann.get('id')!r}"
    ann_id = _int(ann.get("id"), f"{what} id")
    image_id = _int(ann.get("image_id"), f"{what} image_id")
    if image_id not in images:
        raise SourceError(f"{what}: image_id {image_id} is not in the images list")
    category = _int(ann.get("category_id"), f"{what} category_id")
    if category not in category_ids:
        raise SourceError(f"{what}: category_id {category} is not in the categories list")
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise SourceError(f"{what}: bbox {bbox!r} is not [x, y, w, h]")
    box = [_number(v, f"{what} bbox") for v in bbox]
    if box[2] < 0 or box[3] < 0:
        raise SourceError(f"{what}: bbox {bbox} has a negative size")
    check_box_in_image(box, images[image_id]["width"], images[image_id]["height"],
                       f"{what} (image {image_id}, {images[image_id]['file_name']})")
    # pycocotools needs `area`; when a file omits it, the box area stands in.
    area = _number(ann["area"], f"{what} area") if "area" in ann else box[2] * box[3]
    iscrowd = _int(ann.get("iscrowd", 0), f"{what} iscrowd")
    return image_id, box, category, area, iscrowd, ann_id


def parse_instances(document: Any, split: str, images_url: str, where: str, on_error: str = "fail") -> CocoDataset:
    """Validate one instances JSON; images sorted by id, annotations grouped per image in file order.
    A box no detection can match is an error, or (on_error: skip) dropped and listed in `dataset.dropped`."""
    if not isinstance(document, dict) or not all(k in document for k in ("images", "annotations", "categories")):
        raise SourceError(f"{where}: not a COCO instances file (needs images, annotations, categories)")
    categories = [{"id": _int(c.get("id"), f"{where} category id"), "name": str(c.get("name")),
                   "supercategory": str(c.get("supercategory", ""))} for c in document["categories"]]
    if len({c["id"] for c in categories}) != len(categories) or len({c["name"] for c in categories}) != len(categories):
        raise SourceError(f"{where}: category ids or names are not unique")
    images: dict[int, dict[str, Any]] = {}
    for entry in document["images"]:
        image_id = _int(entry.get("id"), f"{where} image id")
        if image_id in images:
            raise SourceError(f"{where}: image id {image_id} appears twice")
        what = f"{where} image {image_id}"
        width, height = _int(entry.get("width"), f"{what} width"), _int(entry.get("height"), f"{what} height")
        if width <= 0 or height <= 0:
            raise SourceError(f"{what}: size {width}×{height} is empty")
        images[image_id] = {"file_name": _safe_relative(entry.get("file_name"), what), "width": width, "height": height}
    rows: dict[int, list] = {image_id: [] for image_id in images}
    seen_ids: set[int] = set()
    dropped: list[dict[str, Any]] = []
    for ann in document["annotations"]:
        try:
            row = _annotation_row(ann, images, {c["id"] for c in categories}, where)
        except UnmatchableBox as error:
            if on_error != "skip":
                raise SourceError(f"{error} (fetch.on_error: skip drops such boxes and lists them)") from None
            dropped.append({"split": split, "image_id": ann.get("image_id"), "annotation_id": ann.get("id"),
                            "cause": str(error)})
            continue
        if row[-1] in seen_ids:
            raise SourceError(f"{where}: annotation id {row[-1]} appears twice")
        seen_ids.add(row[-1])
        rows[row[0]].append(row[1:])
    base = images_url.rstrip("/") + "/"
    dataset = CocoDataset(categories=categories, dropped=dropped)
    for image_id in sorted(images):
        info = images[image_id]
        dataset.images.append(CocoImage(
            split=split, image_id=image_id, file_name=info["file_name"], width=info["width"], height=info["height"],
            truth=_ground_truth(rows[image_id]), url=urljoin(base, quote(info["file_name"])),
        ))
    return dataset


def _ground_truth(rows: list) -> GroundTruth:
    if not rows:
        return GroundTruth(np.zeros((0, 4)), *(np.zeros(0, dtype=t) for t in (np.int64, np.float64, np.int64, np.int64)))
    boxes, categories, areas, crowd, ids = zip(*rows)
    return GroundTruth(np.asarray(boxes, np.float64), np.asarray(categories, np.int64), np.asarray(areas, np.float64),
                       np.asarray(crowd, np.int64), np.asarray(ids, np.int64))


def capped_reader(max_bytes: int) -> ReadBytes:
    return lambda url: read_local(url, max_bytes)


def read_coco(config: CocoFetchConfig, read_bytes: ReadBytes | None = None) -> CocoDataset:
    """Every split of the source; categories must agree across splits. Local files are read under
    `max_annotation_bytes` unless `read_bytes` (which caps its own reads) is given."""
    read_bytes = read_bytes or capped_reader(config.max_annotation_bytes)
    merged: CocoDataset | None = None
    for split in sorted(config.splits):
        source = config.splits[split]
        url = to_url(source.annotations)
        check_scheme(url, config.allowed_schemes)
        try:
            document = json.loads(read_bytes(url))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SourceError(f"{url}: not valid JSON ({error})") from None
        dataset = parse_instances(document, split, to_url(source.images), url, config.on_error)
        if merged is None:
            merged = dataset
        elif dataset.categories != merged.categories:
            raise SourceError(f"{url}: categories differ from the other splits'")
        else:
            merged.images.extend(dataset.images)
            merged.dropped.extend(dataset.dropped)
    if merged is None:
        raise SourceError("no COCO splits configured")
    return merged


def read_checked_image(url: str, what: str, options: ImageFetchOptions,
                       read_bytes: ReadBytes) -> tuple[bytes, int, int]:
    """An image's bytes and (width, height), decoded once in full under the pixel cap; errors name `what`
    (split, image id, file name) and the path."""
    check_scheme(url, options.allowed_schemes)
    try:
        data = read_bytes(url)
    except SourceError as error:  # the reader names the path; the image id is what the user looks up
        raise SourceError(f"{what}: {error}") from None
    try:
        width, height = check_image(data, options.max_pixels, what)
    except SourceError as error:
        raise SourceError(f"{error} (file {url_path(url)})") from None
    return data, width, height


def url_path(url: str) -> str:
    parsed = urlparse(url)
    return unquote(parsed.path) if parsed.scheme == "file" else url


def _read_image(image: CocoImage, config: CocoFetchConfig, read_bytes: ReadBytes) -> bytes:
    what = f"{image.split} image {image.image_id} ({image.file_name})"
    data, width, height = read_checked_image(image.url, what, config, read_bytes)
    if (width, height) != (image.width, image.height):
        raise SourceError(f"{what}: the file is {width}×{height}, the JSON says {image.width}×{image.height}")
    return data


def raw_shard(images: list[CocoImage], blobs: list[bytes]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(per-image columns, flat arrays) of one raw shard."""
    lengths = np.asarray([len(b) for b in blobs], dtype=np.int64)
    truths = [image.truth for image in images]
    gt_bbox, gt_offset = pack([t.bbox for t in truths], np.float64, (4,))
    columns = {
        ITEM_KEY: np.asarray([sha256_bytes(b) for b in blobs], dtype="S64"),
        "id": np.asarray([image.image_id for image in images], dtype=np.int64),
        "split": np.asarray([image.split for image in images], dtype=object),
        "file_name": np.asarray([image.file_name for image in images], dtype=object),
        "width": np.asarray([image.width for image in images], dtype=np.int64),
        "height": np.asarray([image.height for image in images], dtype=np.int64),
        "offset": offsets_for(lengths),
        "length": lengths,
        "gt_offset": gt_offset,
    }
    flat = {
        "blob": np.frombuffer(b"".join(blobs), dtype=np.uint8),
        "gt_bbox": gt_bbox,
        "gt_category": pack([t.category for t in truths], np.int64)[0],
        "gt_area": pack([t.area for t in truths], np.float64)[0],
        "gt_iscrowd": pack([t.iscrowd for t in truths], np.int64)[0],
        "gt_ann_id": pack([t.ann_id for t in truths], np.int64)[0],
    }
    return columns, flat


def skip_or_raise(error: SourceError, on_error: str, record: dict[str, Any], skipped: list[dict[str, Any]]) -> None:
    """One image that cannot be read: an error (fail), or recorded in `skipped` (skip)."""
    if on_error != "skip":
        raise SourceError(f"{error} (fetch.on_error: skip skips such images and lists them)") from None
    skipped.append({**record, "cause": str(error)})


def _coco_items(dataset: CocoDataset, config: CocoFetchConfig, read_bytes: ReadBytes,
                skipped: list[dict[str, Any]]) -> Iterator[tuple[CocoImage, bytes]]:
    for image in dataset.images:
        try:
            yield image, _read_image(image, config, read_bytes)
        except SourceError as error:
            skip_or_raise(error, config.on_error, {"split": image.split, "image_id": image.image_id,
                                                   "file_name": image.file_name, "path": url_path(image.url)}, skipped)


def fetch_coco_layer(config: CocoFetchConfig, out_dir: Path, read_bytes: ReadBytes | None = None) -> LayerIndex:
    """The raw layer: images in (split, id) order, `shard_size` per shard. Local images are read
    under `max_bytes` each unless `read_bytes` (which caps its own reads) is given."""
    dataset = read_coco(config, read_bytes)
    read_bytes = read_bytes or capped_reader(config.max_bytes)
    skipped: list[dict[str, Any]] = []
    items = _coco_items(dataset, config, read_bytes, skipped)
    return write_detection_layer(items, DetectionLayerSpec(config.layer_key(), dataset.categories, config.shard_size,
                                                           len(dataset.images), "fetch coco"),
                                 out_dir, dataset.dropped, skipped)


@dataclass(frozen=True)
class DetectionLayerSpec:
    key: Key
    categories: list[dict[str, Any]]
    shard_size: int
    total: int  # images the source lists (for progress)
    desc: str


def _warn(listed: list[dict[str, Any]], what: str, stat: str, out_dir: Path) -> None:
    lines = "\n".join(f"  {entry['cause']}" for entry in listed[:5])
    more = f"\n  … and {len(listed) - 5} more" if len(listed) > 5 else ""
    print(f"WARNING {what} (on_error: skip); all listed in {out_dir}/index.json (stats.{stat}):\n{lines}{more}",
          file=sys.stderr)


def write_detection_layer(items: Iterable[tuple[CocoImage, bytes]], spec: DetectionLayerSpec, out_dir: Path,
                          dropped: list[dict[str, Any]], skipped: list[dict[str, Any]]) -> LayerIndex:
    """Write (image, bytes) pairs `shard_size` per shard; `dropped` and `skipped` (filled while `items` is
    consumed, under on_error: skip) go into the stats and a warning. A layer of no images is an error."""
    writer = LayerWriter(out_dir, RAW_KIND, spec.key)
    kept, annotations, number = 0, 0, 0

    def flush(chunk: list[tuple[CocoImage, bytes]]) -> None:
        columns, flat = raw_shard([image for image, _ in chunk], [blob for _, blob in chunk])
        # The item key is the sha256 of the image bytes, so it doubles as the per-item checksum `verify` uses.
        writer.add_shard(shard_name(number), columns, attrs={"categories": spec.categories}, flat=flat,
                         checksum_of=("blob",), checksum_column=ITEM_KEY)

    chunk: list[tuple[CocoImage, bytes]] = []
    with tqdm(total=spec.total, desc=spec.desc, unit="image") as progress:
        for image, blob in items:
            chunk.append((image, blob))
            kept, annotations = kept + 1, annotations + len(image.truth)
            progress.update()
            if len(chunk) == spec.shard_size:
                flush(chunk)
                chunk, number = [], number + 1
        if chunk:
            flush(chunk)
    if skipped and not kept:
        raise SourceError(f"every image failed ({len(skipped)}; the first: {skipped[0]['cause']}); "
                          f"nothing to evaluate, so no raw layer is written")
    writer.stats = {"items": kept, "annotations": annotations, "dropped_annotations": dropped,
                    "skipped_images": skipped}
    if dropped:
        _warn(dropped, f"dropped {len(dropped)} ground-truth boxes no detection can match", "dropped_annotations",
              out_dir)
    if skipped:
        _warn(skipped, f"skipped {len(skipped)} images that could not be read", "skipped_images", out_dir)
    return writer.finish()


def _detection_raw_layer(raw_dir: Path) -> Layer:
    layer = Layer.open(raw_dir, kind=RAW_KIND)
    if layer.key.parts.get("source") not in DETECTION_SOURCES:
        raise SourceError(f"{raw_dir} is not a COCO raw layer (its source is {layer.key.parts.get('source', 'a registry')})")
    return layer


def read_categories(raw_dir: Path) -> list[dict[str, Any]]:
    """The dataset's categories from a COCO raw layer's first shard (what a label map is checked against)."""
    layer = _detection_raw_layer(raw_dir)
    if not layer.shards:
        return []
    with layer.open_shard(layer.shards[0]) as handle:
        return read_attrs(handle)["categories"]


def read_ground_truth(raw_dir: Path) -> CocoDataset:
    """Categories and per-image ground truth back from a COCO raw layer (no image bytes)."""
    layer = _detection_raw_layer(raw_dir)
    dataset: CocoDataset | None = None
    for shard in layer.shards:
        with layer.open_shard(shard) as handle:
            if dataset is None:
                dataset = CocoDataset(categories=read_attrs(handle)["categories"])
            columns = {name: read_column(handle, name) for name in ("id", "split", "file_name", "width", "height")}
            offsets = handle["gt_offset"][()]
            check_offsets(offsets, len(handle["gt_category"]), str(layer.path(shard)))
            per_image = {name: unpack(handle[name][()], offsets) for name in GT_FLAT}
            for row in range(shard.n_items):
                truth = GroundTruth(*(per_image[name][row] for name in GT_FLAT))
                dataset.images.append(CocoImage(
                    split=str(columns["split"][row]), image_id=int(columns["id"][row]),
                    file_name=str(columns["file_name"][row]), width=int(columns["width"][row]),
                    height=int(columns["height"][row]), truth=truth,
                ))
    return dataset or CocoDataset(categories=[])


def coco_document(dataset: CocoDataset, split: str) -> dict[str, Any]:
    """The COCO ground-truth document of one split, as pycocotools expects it."""
    images = [image for image in dataset.images if image.split == split]
    if not images:
        splits = sorted({image.split for image in dataset.images})
        raise SourceError(f"no images in split {split!r}; splits present: {splits}")
    annotations = []
    for image in images:
        t = image.truth
        for box, category, area, crowd, ann_id in zip(t.bbox.tolist(), t.category.tolist(), t.area.tolist(),
                                                     t.iscrowd.tolist(), t.ann_id.tolist()):
            annotations.append({"id": ann_id, "image_id": image.image_id, "category_id": category,
                                "bbox": box, "area": area, "iscrowd": crowd})
    return {
        "images": [{"id": i.image_id, "file_name": i.file_name, "width": i.width, "height": i.height} for i in images],
        "annotations": annotations,
        "categories": [dict(c) for c in dataset.categories],
    }
