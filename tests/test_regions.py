"""PAD's PLS features against a pixel-by-pixel reference written from upstream's algorithm.

tests/test_pad_analytics.py compares them with pad-analytics 0.2.2 itself; these run without it.
"""
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalstack.core.layers import Layer
from evalstack.core.raw import read_blobs
from evalstack.demo.cards import plan_cards, render_card, write_dataset
from evalstack.fetch.raw_layer import FetchConfig, fetch_raw_layer
from evalstack.preprocess.pipelines import PipelineError, build_pipeline, preprocess_layer
from evalstack.preprocess.regions import (
    PadRegionsPipeline,
    feature_names,
    lane_box,
    region_box,
    region_features,
    saturation_value,
)
from evalstack.sources.images import decode_image


def reference_box(box_rgb: np.ndarray) -> tuple[int, int, int]:
    """Upstream's loop, pixel by pixel: weighted S/V, every pixel that is not dark is averaged."""
    s, v = saturation_value(box_rgb)
    rows, cols = s.shape
    cx, cy = rows / 2, cols / 2
    chosen = []
    for i in range(rows):
        for j in range(cols):
            weight = math.cos(math.pi / 2 * max(abs(cx - i) / cx, abs(cy - j) / cy))
            if not (weight * s[i, j] <= 35 and weight * v[i, j] <= 70):
                chosen.append((i, j))
    if not chosen:
        return 0, 0, 0
    mean = np.mean([box_rgb[i, j].astype(float) for i, j in chosen], axis=0)
    return tuple(int(c + 0.5) for c in mean)


def reference_features(card: np.ndarray) -> np.ndarray:
    values = []
    for lane in range(1, 13):
        x0, x1 = lane_box(lane)
        for region in range(10):
            y0, y1 = region_box(region, 10)
            values.extend(reference_box(card[y0:y1, x0:x1]))
    return np.asarray(values, dtype=np.float32)


def test_geometry_matches_upstream_facts():
    assert lane_box(1) == (82, 111) and lane_box(12) == (665, 694)  # 12 px inside lanes starting at x = 70
    assert region_box(0, 10) == (359, 386) and region_box(9, 10) == (604, 632)  # reaction zone y 359–632
    names = feature_names()
    assert len(names) == 360 and names[:4] == ["A1-R", "A1-G", "A1-B", "A2-R"] and names[-1] == "L10-B"


def test_saturation_is_opencv_hsv():
    rgb = np.asarray([[255, 0, 0], [128, 128, 128], [0, 0, 0], [200, 100, 50]], dtype=np.uint8)
    s, v = saturation_value(rgb)
    assert v.tolist() == [255, 128, 0, 200]
    assert s.tolist() == [255, 0, 0, 191]  # 255 · 150/200 = 191.25


def test_saturation_and_value_equal_opencvs_bgr2hsv_on_every_colour():
    """pad-analytics thresholds OpenCV's 8-bit HSV: all 2^24 colours, against cv2.cvtColor itself."""
    import cv2

    levels = np.arange(256, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(4096, 4096, 3)
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2HSV)
    saturation, value = saturation_value(rgb)
    assert np.array_equal(saturation, hsv[..., 1]) and np.array_equal(value, hsv[..., 2])


@pytest.mark.parametrize("seed", [0, 1])
def test_features_equal_pixel_by_pixel_reference_on_cards(seed):
    spec = plan_cards(4, seed)[seed]
    card = np.asarray(render_card(spec, seed).convert("RGB"))
    np.testing.assert_array_equal(region_features(card), reference_features(card))


def test_features_equal_reference_on_noise_dark_and_grey_boxes():
    rng = np.random.default_rng(5)
    card = rng.integers(0, 256, size=(1220, 730, 3), dtype=np.uint8)
    card[359:500, 82:400] = 30  # dark grey: every pixel skipped → 0
    card[500:632, 400:694] = 200  # light grey: S = 0 but V high, every pixel kept → 200
    ours = region_features(card)
    np.testing.assert_array_equal(ours, reference_features(card))
    assert (ours == 0).any() and (ours == 200).any()


def test_too_small_image_is_a_clear_error():
    with pytest.raises(PipelineError, match=r"cannot hold the PAD reaction zone"):
        PadRegionsPipeline().process_image(Image.new("RGB", (300, 300)))


def test_feature_pipeline_through_the_store(tmp_path: Path):
    """A non-image tensor (360,) float32 goes through preprocess and reads back exactly."""
    source = tmp_path / "source"
    write_dataset(source, n_cards=4, seed=0, test_fraction=0.5)
    registries = {split: str(source / f"metadata_{split}.csv") for split in ("dev", "test")}
    fetch_raw_layer(FetchConfig(registries, shard_bytes=3 * 1_370_000), tmp_path / "raw")
    pipeline = build_pipeline({"kind": "pad_regions", "regions": 10})
    index = preprocess_layer(tmp_path / "raw", tmp_path / "features", pipeline).index
    layer = Layer.open(tmp_path / "features")
    x = layer.column("x")
    assert index.n_items == 4 and x.shape == (4, 360) and x.dtype == np.float32
    assert layer.key.parts["params"] == {"regions": 10}
    raw = Layer.open(tmp_path / "raw")
    with raw.open_shard(raw.shards[0]) as handle:
        first = decode_image(read_blobs(handle, slice(0, 1))[0])
    np.testing.assert_array_equal(x[0], region_features(np.asarray(first.convert("RGB"))))
