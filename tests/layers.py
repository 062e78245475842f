"""Tiny real layers for unit tests: a registry of small PNGs, a small pipeline, a numpy model."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evalstack.cache.shardstore import ShardStore, StoreConfig
from evalstack.config import ModelSpec
from evalstack.fetch.raw_layer import FetchConfig, fetch_raw_layer
from evalstack.models.adapters.base import ModelAdapter
from evalstack.models.inference import infer_layer
from evalstack.preprocess.pipelines import CropResizePipeline, preprocess_layer
from tests.test_fetch import make_registry

ITEM_BYTES = 3698  # every test PNG (40×30 random pixels, see tests.conftest.png_bytes) is this long

LABELS = ("a", "b", "c")


class NumpyAdapter(ModelAdapter):
    """A linear model whose weights are the bytes of its file: real file, real signature, no framework."""

    framework = "numpy"

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        seed = int.from_bytes(self.take_weights().data[:8].ljust(8, b"\0"), "little")
        self.size = int(spec.options.get("size", 8))
        rng = np.random.default_rng(seed)
        self.weights = rng.normal(size=(self.size * self.size * 3, len(spec.labels))).astype(np.float32)

    def input_shape(self) -> tuple[int, ...]:
        return (self.size, self.size, 3)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return (batch.reshape(len(batch), -1) / 255.0) @ self.weights


class SlowNumpyAdapter(NumpyAdapter):
    """NumpyAdapter that takes `options.delay` seconds a batch: a computation still running when a test acts."""

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        import time

        time.sleep(float(self.spec.options["delay"]))
        return super()._forward(batch)


def numpy_model(directory: Path, weights: bytes = b"weights1", size: int = 8) -> NumpyAdapter:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "m.npy").write_bytes(weights)
    spec = ModelSpec(name="m", file=directory / "m.npy", adapter="numpy", pipeline="tiny", labels=LABELS,
                     options={"size": size})
    return NumpyAdapter(spec)


def tiny_pipeline(size: int = 8) -> CropResizePipeline:
    return CropResizePipeline(crop=(0, 0, 40, 30), resize=size, resample="bilinear")


def store_at(directory: Path, link: str = "copy", max_bytes: int = 10**9) -> ShardStore:
    return ShardStore(StoreConfig(directory, max_bytes, link))


@dataclass
class Project:
    """Source registry + layer directories under one root, laid out like the template's data/."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "data/raw"

    @property
    def pre(self) -> Path:
        return self.root / "data/preprocessed/tiny"

    @property
    def pred(self) -> Path:
        return self.root / "data/predictions/m"

    def grow(self, n_items: int) -> None:
        make_registry(self.root / "source", n=n_items)

    def fetch(self, store: ShardStore | None, shard_bytes: int = 3 * ITEM_BYTES) -> None:
        # A relative registry path, as in params.yaml: the raw layer key (and so every shard) records it.
        with contextlib.chdir(self.root):
            fetch_raw_layer(FetchConfig({"dev": "source/metadata_dev.csv"}, shard_bytes=shard_bytes), self.raw, store)

    def preprocess(self, store: ShardStore | None, size: int = 8):
        return preprocess_layer(self.raw, self.pre, tiny_pipeline(size), "lz4", store=store, name="tiny")

    def infer(self, store: ShardStore | None, weights: bytes = b"weights1", size: int = 8):
        model = numpy_model(self.root / "models", weights, size)
        return infer_layer(self.pre, self.pred, model, batch_size=3, store=store)

    def build(self, n_items: int, store: ShardStore | None):
        self.grow(n_items)
        self.fetch(store)
        return self.preprocess(store), self.infer(store)


def digests(*directories: Path) -> dict[str, bytes]:
    """Every file's bytes under the layer directories, by path relative to its layer."""
    return {
        f"{directory.name}/{path.name}": path.read_bytes()
        for directory in directories
        for path in sorted(directory.iterdir())
        if path.is_file()
    }
