"""One decode path for the detection profile (issue 22, item 4): the clean letterboxed input and a grid cell's
input at no corruption are the same array, whatever mode the image file is in.

Before, the grid decoded with `.convert("RGB")`, which clips 16-bit grey to white while the clean path scales
it (preprocess/modes.py), so mPC/rPC of a 16-bit dataset were biased with exit 0.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from evalstack.core.layers import ITEM_KEY, Layer, read_column
from evalstack.core.raw import read_blobs
from evalstack.detection import grid as grid_module
from evalstack.detection.adapter import load_detector
from evalstack.detection.candidates import infer_candidates_layer, open_candidates, read_candidates_shard_checked
from evalstack.detection.grid import GridConfig, build_grid
from evalstack.preprocess.letterbox import LetterboxPipeline, letterbox_layer
from evalstack.sources.coco import CocoFetchConfig, CocoSplit, fetch_coco_layer
from tests.detection_helpers import SIZE, export_tiny_detector, spec

W, H = 40, 30
PIPELINE = LetterboxPipeline(resize=SIZE)


def _pixels(seed: int, channels: int | None, high: int = 256, dtype=np.uint8) -> np.ndarray:
    shape = (H, W) if channels is None else (H, W, channels)
    return np.random.default_rng(seed).integers(0, high, size=shape).astype(dtype)


def _palette_with_transparency() -> Image.Image:
    image = Image.fromarray(_pixels(3, 3), "RGB").quantize(16)
    image.info["transparency"] = 0
    return image


IMAGES = {  # file name → (image, format)
    "sixteen.png": (Image.fromarray(_pixels(1, None, 65536, np.uint16)), "PNG"),  # I;16
    "grey_alpha.png": (Image.fromarray(_pixels(2, 2), "LA"), "PNG"),
    "palette.png": (_palette_with_transparency(), "PNG"),
    "cmyk.jpg": (Image.fromarray(_pixels(4, 4), "CMYK"), "JPEG"),
    "bilevel.png": (Image.fromarray(_pixels(5, None) > 127).convert("1"), "PNG"),
    "rgb.png": (Image.fromarray(_pixels(6, 3), "RGB"), "PNG"),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("modes")
    images = root / "images"
    images.mkdir()
    entries = []
    for number, (name, (image, fmt)) in enumerate(IMAGES.items(), start=1):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        (images / name).write_bytes(buffer.getvalue())
        entries.append({"id": number, "file_name": name, "width": W, "height": H})
    document = {"images": entries, "categories": [{"id": 1, "name": "circle"}], "annotations": []}
    (root / "val.json").write_text(json.dumps(document))
    fetch_coco_layer(CocoFetchConfig({"val": CocoSplit(str(root / "val.json"), str(images))}, shard_size=4), root / "raw")
    letterbox_layer(root / "raw", root / "pre", PIPELINE)
    return root


def test_the_fixture_holds_every_mode():
    modes = {name: image.mode for name, (image, _) in IMAGES.items()}
    assert modes == {"sixteen.png": "I;16", "grey_alpha.png": "LA", "palette.png": "P", "cmyk.jpg": "CMYK",
                     "bilevel.png": "1", "rgb.png": "RGB"}
    reread = Image.open(io.BytesIO(_encoded(*IMAGES["sixteen.png"])))
    assert reread.mode == "I;16" and np.asarray(reread).max() > 255  # really 16-bit values on disk


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_clean_input_equals_the_grid_input_at_no_corruption_for_every_mode(project: Path):
    raw, pre = Layer.open(project / "raw"), Layer.open(project / "pre")
    compared = 0
    for raw_shard, pre_shard in zip(raw.shards, pre.shards):
        with raw.open_shard(raw_shard) as handle:
            blobs = read_blobs(handle, slice(0, raw_shard.n_items))
            keys = read_column(handle, ITEM_KEY)
        with h5py.File(pre.path(pre_shard), "r") as handle:
            clean = read_column(handle, "x")
        for row, blob in enumerate(blobs):
            grid_input = grid_module._perturbed_input(blob, str(keys[row]), None, 0, PIPELINE, 1 << 24, "image")
            np.testing.assert_array_equal(grid_input, clean[row])
            compared += 1
    assert compared == len(IMAGES)
    sixteen = clean_tensor(project, 1)
    content = sixteen[SIZE // 2 - 4 : SIZE // 2 + 4, SIZE // 2 - 4 : SIZE // 2 + 4]
    assert content.min() < 200  # scaled to 8 bits, not clipped to white


def clean_tensor(project: Path, image_id: int) -> np.ndarray:
    layer = Layer.open(project / "pre")
    for shard in layer.shards:
        with h5py.File(layer.path(shard), "r") as handle:
            ids = read_column(handle, "id")
            if image_id in ids.tolist():
                return read_column(handle, "x")[ids.tolist().index(image_id)]
    raise AssertionError(f"no image {image_id}")


@pytest.mark.slow
def test_a_cell_with_the_corruption_removed_gives_the_clean_candidates(project: Path, tmp_path: Path, monkeypatch):
    """The whole grid path (raw blob → decode → corruption → letterbox → forward pass), corruption made a no-op:
    every image's candidates equal the clean ones bit for bit."""
    model = export_tiny_detector(tmp_path / "det.pt2", n_classes=1)
    labels = ("circle",)
    infer_candidates_layer(project / "pre", tmp_path / "cand", load_detector(spec(model, labels)), ["val"], 8)
    monkeypatch.setattr(grid_module.perturb, "perturb", lambda image, *args: image)
    config = GridConfig(("gaussian_noise",), (1,))
    build_grid(project / "raw", project / "pre", tmp_path / "cand", tmp_path / "grid", load_detector(spec(model, labels)),
               PIPELINE, config, batch_size=8)
    clean, cell = open_candidates(tmp_path / "cand"), open_candidates(tmp_path / "grid" / "gaussian_noise-1")
    for a, b in zip(clean.shards, cell.shards):
        x, y = read_candidates_shard_checked(clean, a), read_candidates_shard_checked(cell, b)
        assert len(x) and np.array_equal(x.ids, y.ids)
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.scores, y.scores)
        np.testing.assert_array_equal(x.labels, y.labels)
