"""Detection preprocessing: letterbox each image into a square model input.

The image is scaled to fit `resize` with its aspect ratio kept and centred on a
grey canvas. The placement (scale per axis, padding) is a pure function of the
original size, recorded per item, so boxes predicted in model-input pixels map
back to the original image exactly, and ground truth maps forward for training.
The output is uint8 (exact) and read back as float32 0–255 like every pipeline.

The geometry is Ultralytics' `LetterBox` with its defaults for a fixed-size (exported) model
(`auto=False`, `scaleup=True`, `center=True`): scale r = min(S/h, S/w) (images smaller than S
are scaled up), unpadded size `int(round(w·r))` × `int(round(h·r))` (Python's round, half to
even, as there), padding split top = `round(dh/2 - 0.1)`, bottom = `round(dh/2 + 0.1)` — the
floor of half the padding on the top/left, the odd pixel at the bottom/right, as below — grey
114. `resample: opencv_linear` resizes with OpenCV's INTER_LINEAR, Ultralytics' interpolation,
so the input is Ultralytics' pixel for pixel; Pillow's `bilinear` antialiases a downscale and
gives other pixels (same geometry). `stride: 32` checks that the side is a multiple of the
model's stride, as Ultralytics' `check_imgsz` requires. Its `auto=True` (rectangular inference:
each image padded only to the next stride multiple) gives every image its own input shape; a
preprocessed layer holds one shape, and exported models take one, so it is not offered.

Boxes map back with the per-axis scale the resize applied (new_w / w, new_h / h) and the left/top
padding: exact for the drawn pixels. Ultralytics' `scale_boxes` divides by the single gain r and
takes the padding from the unrounded size, which differs from this by under a pixel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from evalstack.cache.incremental import DerivedLayerSpec, LayerBuild, ShardContent, build_derived_layer
from evalstack.cache.shardstore import ShardStore
from evalstack.core.kinds import PREPROCESSED_KIND, RAW_KIND
from evalstack.core.layers import ITEM_KEY, Layer, ShardInfo, read_column
from evalstack.core.raw import read_blobs
from evalstack.preprocess.modes import decode_rgb, rgb
from evalstack.preprocess.pipelines import RESAMPLING, PipelineError, PreprocessingPipeline
from evalstack.sources.images import DEFAULT_MAX_PIXELS

PLACEMENT_COLUMNS = ("width", "height", "scale_x", "scale_y", "pad_x", "pad_y")
OPENCV_LINEAR = "opencv_linear"  # cv2.resize(..., INTER_LINEAR): what Ultralytics' LetterBox resizes with


def opencv_linear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 resized to `size` (width, height) by OpenCV's INTER_LINEAR; unchanged at the same size
    (Ultralytics skips the resize then)."""
    try:
        import cv2
    except ImportError:
        raise PipelineError("resample: opencv_linear needs OpenCV: pip install opencv-python-headless") from None
    if (pixels.shape[1], pixels.shape[0]) == tuple(size):
        return pixels
    return cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class Placement:
    """Where an original image sits in the model input: input = original · scale + pad."""

    width: int
    height: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Model-input xyxy boxes → original-image xyxy, clipped to the image."""
        scale = np.asarray([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        pad = np.asarray([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        boxes = (np.asarray(boxes_xyxy, dtype=np.float64) - pad) / scale
        limits = np.asarray([self.width, self.height, self.width, self.height], dtype=np.float64)
        return np.clip(boxes, 0.0, limits)

    def to_input(self, boxes_xywh: np.ndarray) -> np.ndarray:
        """Original-image xywh boxes → model-input xywh (for training targets)."""
        scale = np.asarray([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        pad = np.asarray([self.pad_x, self.pad_y, 0.0, 0.0])
        return np.asarray(boxes_xywh, dtype=np.float64) * scale + pad


@dataclass(frozen=True)
class LetterboxPipeline(PreprocessingPipeline):
    resize: int = 128
    fill: int = 114  # grey padding, the usual letterbox colour
    resample: str = "bilinear"
    # a check only (the side must be a multiple of it): not in the key
    stride: int | None = field(default=None, metadata={"outside_key": True})
    kind: ClassVar[str] = "letterbox"

    def __post_init__(self) -> None:
        if not 16 <= self.resize <= 2048:
            raise PipelineError(f"letterbox resize {self.resize} out of range 16–2048")
        if self.resample not in RESAMPLING and self.resample != OPENCV_LINEAR:
            raise PipelineError(f"resample {self.resample!r} unknown; choose from "
                                f"{sorted([*RESAMPLING, OPENCV_LINEAR])}")
        if self.stride is not None and (self.stride < 1 or self.resize % self.stride):
            multiple = max(1, round(self.resize / max(1, self.stride))) * max(1, self.stride)
            raise PipelineError(f"letterbox resize {self.resize} is not a multiple of stride {self.stride} "
                                f"(a YOLO model's input side is); use resize {multiple}")
        if not 0 <= self.fill <= 255:
            raise PipelineError(f"fill {self.fill} is not a grey level 0–255")

    def parameters(self) -> dict[str, Any]:
        return {"resize": self.resize, "fill": self.fill, "resample": self.resample}

    def output_shape(self) -> tuple[int, int, int]:
        return (self.resize, self.resize, 3)

    def output_dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def placement(self, width: int, height: int) -> Placement:
        ratio = self.resize / max(width, height)
        new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
        # Per-axis scales from the rounded size: exactly what the resize did to each axis.
        return Placement(width, height, new_w / width, new_h / height, (self.resize - new_w) // 2, (self.resize - new_h) // 2)

    def process_image(self, image: Image.Image) -> np.ndarray:
        return self.letterbox(np.asarray(rgb(image), dtype=np.uint8))

    def letterbox(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB (what `modes.decode_rgb` gives, corrupted or not) → the model input."""
        height, width = pixels.shape[:2]
        place = self.placement(width, height)
        size = (round(place.width * place.scale_x), round(place.height * place.scale_y))
        if self.resample == OPENCV_LINEAR:
            resized = Image.fromarray(opencv_linear(pixels, size))
        else:
            resized = Image.fromarray(pixels, mode="RGB").resize(size, RESAMPLING[self.resample])
        canvas = Image.new("RGB", (self.resize, self.resize), (self.fill,) * 3)
        canvas.paste(resized, (int(place.pad_x), int(place.pad_y)))
        return np.asarray(canvas, dtype=np.uint8)


def build_letterbox(spec: Mapping[str, Any]) -> LetterboxPipeline:
    params = dict(spec)
    if params.pop("kind", "letterbox") != "letterbox":
        raise PipelineError(f"detection pipelines are letterbox pipelines, got kind {spec.get('kind')!r}")
    try:
        return LetterboxPipeline(**params)
    except TypeError as error:
        raise PipelineError(f"letterbox: {error}") from None


def placements(columns: Mapping[str, np.ndarray]) -> list[Placement]:
    """Per-item placements from a preprocessed detection shard's columns."""
    values = [columns[name].tolist() for name in PLACEMENT_COLUMNS]
    return [Placement(int(w), int(h), sx, sy, px, py) for w, h, sx, sy, px, py in zip(*values)]


def letterbox_layer(
    raw_dir: Path,
    out_dir: Path,
    pipeline: LetterboxPipeline,
    compression: str = "lz4",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    store: ShardStore | None = None,
    name: str | None = None,
) -> LayerBuild:
    """One shard per raw shard: tensors + placement + image id/split, item order kept; stored shards reused."""
    raw = Layer.open(raw_dir, kind=RAW_KIND)
    label = f"pipeline {name or pipeline.kind}"
    key = pipeline.cache_key()  # once: the closure travels to worker processes with its hex
    spec = DerivedLayerSpec(PREPROCESSED_KIND, key, label, {"": label}, "items_preprocessed", compression)

    def compute(shard: ShardInfo, path: Path, progress: tqdm) -> ShardContent:
        with h5py.File(path, "r") as handle:
            ids, splits = read_column(handle, "id"), read_column(handle, "split")
            tensors = np.empty((shard.n_items, *pipeline.output_shape()), dtype=np.uint8)
            placed = []
            for row, data in enumerate(read_blobs(handle, slice(0, shard.n_items))):
                # the grid decodes its originals with the same function (detection/grid.py)
                pixels = decode_rgb(data, max_pixels, f"{splits[row]} image {ids[row]} in {path}")
                tensors[row] = pipeline.letterbox(pixels)
                placed.append(pipeline.placement(pixels.shape[1], pixels.shape[0]))
                progress.update()
            columns = {ITEM_KEY: read_column(handle, ITEM_KEY), "id": ids, "split": splits, "x": tensors}
        for column in PLACEMENT_COLUMNS:
            columns[column] = np.asarray([getattr(p, column) for p in placed], dtype=np.float64)
        return ShardContent(columns, {"pipeline_key": key.hex}, ("x",))

    return build_derived_layer(raw, out_dir, spec, compute, store)
