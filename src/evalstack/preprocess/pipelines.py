"""Preprocessing pipelines and the preprocess stage (raw layer → preprocessed layer).

A pipeline turns one decoded card photo into one model-ready array. Its cache key
is (kind, canonical params, code fingerprint); settings that do not change results
(batch size, workers, compression) stay out of it.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, is_dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from evalstack.cache.executors import Executor
from evalstack.cache.incremental import DerivedLayerSpec, LayerBuild, ShardContent, build_derived_layer
from evalstack.cache.shardstore import ShardStore
from evalstack.config import entry
from evalstack.core.fingerprint import code_part, defining_module, runtime_part
from evalstack.core.keys import Key
from evalstack.core.kinds import PREPROCESSED_KIND, RAW_KIND
from evalstack.core.layers import ITEM_KEY, Layer, ShardColumns, ShardInfo
from evalstack.core.raw import read_blobs
from evalstack.preprocess.modes import eight_bit, three_channels
from evalstack.sources.images import DEFAULT_MAX_PIXELS, decode_image

# The libraries that compute a pipeline's pixels (decode, crop, resize; regions and letterbox use OpenCV too).
PIPELINE_RUNTIME = ("pillow", "numpy", "opencv-python-headless")

PAD_NN_CROP = (71, 359, 707, 849)
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class PipelineError(ValueError):
    """A pipeline was configured wrongly or cannot process an item."""


class PreprocessingPipeline(ABC):
    """One decoded image in, one model-ready array out: an image (H, W, C) or a feature vector."""

    kind: ClassVar[str]

    @abstractmethod
    def parameters(self) -> dict[str, Any]:
        """Every setting that changes the output, JSON-serialisable."""

    @abstractmethod
    def output_shape(self) -> tuple[int, ...]: ...

    @abstractmethod
    def output_dtype(self) -> np.dtype: ...

    @abstractmethod
    def process_image(self, image: Image.Image) -> np.ndarray: ...

    def min_input_size(self) -> tuple[int, int]:
        """(width, height) below which an image cannot give this pipeline's output: process_item refuses it,
        naming the item, instead of computing from pixels that are not there (Pillow pads a crop outside the
        image with black, so a 1×1 card would give an all-black tensor with no word)."""
        return (1, 1)

    def cache_key(self) -> Key:
        """(kind, params, code, runtime): the code is the import closure of the module that defines this
        pipeline and of the preprocess stage, so an edit to either changes the key (no version to bump); the
        runtime is the versions of the imaging libraries that compute the pixels."""
        code = code_part(defining_module(type(self)), __name__)
        params = self.parameters()
        _check_fields_in(self, params)
        return Key("pipeline", {"kind": self.kind, "params": params, "code": code,
                                "runtime": runtime_part(*PIPELINE_RUNTIME)})


def _check_fields_in(pipeline: PreprocessingPipeline, params: Mapping[str, Any]) -> None:
    """A setting that params.yaml can give the pipeline (an argument of its constructor: a dataclass field, an
    InitVar) but that `parameters()` leaves out would change the output without changing the key, and a layer
    computed under one value would be reused for another. A field that truly changes nothing says so with
    `field(metadata={"outside_key": True})`; one `parameters()` gives under another name, with
    `field(metadata={"key": "<name>"})`."""
    metadata = {f.name: f.metadata for f in fields(pipeline)} if is_dataclass(pipeline) else {}
    arguments = [name for name, parameter in inspect.signature(type(pipeline)).parameters.items()
                 if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]
    missing = [name for name in arguments if not metadata.get(name, {}).get("outside_key")
               and metadata.get(name, {}).get("key", name) not in params]
    if missing:
        raise PipelineError(f"{type(pipeline).__name__}.parameters() leaves out {', '.join(missing)}: every setting "
                            "that changes the output must be in it (it is the pipeline's part of the cache key); "
                            "mark one that changes nothing with field(metadata={'outside_key': True})")


@dataclass(frozen=True)
class CropResizePipeline(PreprocessingPipeline):
    """Crop a box, resize, keep 0–255 values.

    With the defaults this is PAD's `nn_predict` preprocessing exactly:
    crop((71, 359, 707, 849)) → resize((454, 454), BICUBIC) → float32 0–255, no
    normalisation. Pillow's resize of an 8-bit image yields integers, so the
    output is stored as uint8 (exact) and read back as float32.
    """

    crop: tuple[int, int, int, int] = PAD_NN_CROP
    resize: int = 454  # not `size`: DVC's run-cache ignores params named size (DVC #10296)
    resample: str = "bicubic"
    kind: ClassVar[str] = "crop_resize"

    def __post_init__(self) -> None:
        left, top, right, bottom = self.crop
        if not (right > left and bottom > top):
            raise PipelineError(f"crop box {self.crop} is empty")
        if self.resample not in RESAMPLING:
            raise PipelineError(f"resample {self.resample!r} unknown; choose from {sorted(RESAMPLING)}")
        if not 8 <= self.resize <= 2048:
            raise PipelineError(f"resize {self.resize} out of range 8–2048")

    def parameters(self) -> dict[str, Any]:
        return {"crop": list(self.crop), "resize": self.resize, "resample": self.resample}

    def output_shape(self) -> tuple[int, int, int]:
        return (self.resize, self.resize, 3)

    def min_input_size(self) -> tuple[int, int]:
        return (self.crop[2], self.crop[3])  # the crop box lies inside the image

    def output_dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def process_image(self, image: Image.Image) -> np.ndarray:
        # Resized in its own 8-bit mode as upstream's Pillow calls would, then alpha dropped and grey
        # copied to 3 channels; other modes per the table in preprocess/modes.py.
        resized = eight_bit(image).crop(self.crop).resize((self.resize, self.resize), RESAMPLING[self.resample])
        return np.ascontiguousarray(three_channels(np.asarray(resized, dtype=np.uint8)))


# kind → (module, class), imported when used: a pipeline's cache key fingerprints its own module's
# import closure, so pad_regions' feature code is not part of crop_resize's key (nor the reverse).
# Register your own kind with one line here (or `PIPELINE_KINDS["mine"] = ("my_module", "Mine")`).
PIPELINE_KINDS: dict[str, tuple[str, str]] = {
    "crop_resize": ("evalstack.preprocess.pipelines", "CropResizePipeline"),
    "pad_regions": ("evalstack.preprocess.regions", "PadRegionsPipeline"),
}


def build_pipeline(spec: Mapping[str, Any]) -> PreprocessingPipeline:
    """A pipeline from its params.yaml entry, e.g. {kind: crop_resize, size: 454}."""
    params = dict(spec)
    kind = params.pop("kind", None)
    if kind not in PIPELINE_KINDS:
        raise PipelineError(f"pipeline kind {kind!r} unknown; registered: {sorted(PIPELINE_KINDS)}")
    if "crop" in params:
        params["crop"] = tuple(int(v) for v in params["crop"])
    try:
        return getattr(import_module(PIPELINE_KINDS[kind][0]), PIPELINE_KINDS[kind][1])(**params)
    except TypeError as error:
        raise PipelineError(f"pipeline {kind}: {error}") from None


def decoded_images(
    handle: h5py.File | ShardColumns, n_items: int, max_pixels: int, describe: Callable[[int], str], progress: tqdm
) -> Iterator[tuple[int, Image.Image]]:
    """(row, image) for each item of an open raw shard, decoded under the pixel cap; the bar advances per item.

    `describe(row)` names the item in a decoding error (its id, and split where it helps)."""
    for row, data in enumerate(read_blobs(handle, slice(0, n_items))):
        yield row, decode_image(data, max_pixels, what=describe(row))
        progress.update()


def preprocess_layer(
    raw_dir: Path,
    out_dir: Path,
    pipeline: PreprocessingPipeline,
    compression: str = "lz4",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    store: ShardStore | None = None,
    name: str | None = None,
    executor: Executor | None = None,
) -> LayerBuild:
    """One preprocessed shard per raw shard, item order preserved; shards the store holds are reused."""
    raw = Layer.open(raw_dir, kind=RAW_KIND)
    if len(raw) == 0:  # a layer of nothing would score as a model that saw no cards: refuse it, loudly
        raise PipelineError(f"{raw_dir} holds no items: there is nothing to preprocess; fetch it again "
                            "(data/fetch_report.json says what failed)")
    label = f"pipeline {name or pipeline.kind}"
    key = pipeline.cache_key()  # once: the closure travels to worker processes with its hex
    spec = DerivedLayerSpec(PREPROCESSED_KIND, key, label, {"": label}, "items_preprocessed", compression)

    def compute(shard: ShardInfo, path: Path, progress: tqdm) -> ShardContent:
        with ShardColumns(path, shard) as handle:
            keys = handle.read(ITEM_KEY, decode=False)  # fixed width, so readers of this layer skip HDF5 too
            ids = handle.read("id")
            tensors = np.empty((shard.n_items, *pipeline.output_shape()), dtype=pipeline.output_dtype())
            describe = lambda r: f"item id {ids[r]} in {path}"  # noqa: E731
            for row, image in decoded_images(handle, shard.n_items, max_pixels, describe, progress):
                tensors[row] = process_item(pipeline, image, describe(row))
        return ShardContent({ITEM_KEY: keys, "x": tensors}, {"pipeline_key": key.hex}, ("x",))

    return build_derived_layer(raw, out_dir, spec, compute, store, executor)


def process_item(pipeline: PreprocessingPipeline, image: Image.Image, what: str) -> np.ndarray:
    """`pipeline.process_image`, with any failure to handle this image named by its item."""
    min_width, min_height = pipeline.min_input_size()
    if image.size[0] < min_width or image.size[1] < min_height:
        raise PipelineError(
            f"{what}: the image is {image.size[0]}×{image.size[1]}, smaller than the {min_width}×{min_height} "
            f"this {pipeline.kind} pipeline needs ({pipeline.parameters()}); it is not a card this pipeline can "
            "read (check the source, or give the pipeline a crop that fits)")
    try:
        return pipeline.process_image(image)
    except (PipelineError, ValueError) as error:  # ImageModeError, a shape Pillow/numpy cannot handle
        raise PipelineError(f"{what}: {error} (image mode {image.mode}, {image.size[0]}×{image.size[1]})") from None


def pipeline_spec(params: Mapping[str, Any], name: str) -> PreprocessingPipeline:
    return build_pipeline(entry(params.get("preprocess") or {}, "pipelines", name))
