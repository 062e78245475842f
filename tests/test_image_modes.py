"""Every Pillow image mode a card may come in has a decided meaning in the pipelines (preprocess/modes.py).

Issue 15, finding 9: a grey+alpha (LA) PNG crashed preprocess with a broadcast error naming no
item, and a 16-bit greyscale card became flat white without a word.
"""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalstack.core.layers import Layer
from evalstack.fetch.raw_layer import FetchConfig, fetch_raw_layer
from evalstack.preprocess.letterbox import LetterboxPipeline
from evalstack.preprocess.pipelines import CropResizePipeline, PipelineError, preprocess_layer
from evalstack.preprocess.regions import PadRegionsPipeline
from evalstack.sources.images import decode_image
from evalstack.sources.registry import REGISTRY_COLUMNS

W, H = 40, 30
PIPELINE = CropResizePipeline(crop=(0, 0, W, H), resize=16, resample="bicubic")


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise(mode_channels: int | None, seed: int = 0, dtype=np.uint8, high: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (H, W) if mode_channels is None else (H, W, mode_channels)
    return rng.integers(0, high, size=shape).astype(dtype)


def raw_layer_of(tmp_path: Path, images: list[tuple[str, bytes]]) -> Path:
    """A fetched raw layer holding these encoded images (ids 100, 101, …)."""
    source = tmp_path / "source"
    (source / "images").mkdir(parents=True)
    with open(source / "metadata_dev.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REGISTRY_COLUMNS)
        for i, (suffix, data) in enumerate(images):
            name = f"{100 + i}__1__lactose__50.{suffix}"
            (source / "images" / name).write_bytes(data)
            writer.writerow([100 + i, 1, "lactose", 50, "x", f"images/{name}", hashlib.md5(data).hexdigest(), name])
    fetch_raw_layer(FetchConfig({"dev": str(source / "metadata_dev.csv")}, shard_bytes=8 * 4000), tmp_path / "raw", None)
    return tmp_path / "raw"


def tensors(layer_dir: Path) -> np.ndarray:
    layer = Layer.open(layer_dir)
    return np.concatenate([batch["x"] for batch in layer.iter_batches(["x"], 64)])


def test_grey_alpha_and_16_bit_cards_go_through_preprocess(tmp_path: Path):
    grey = noise(None)
    la = Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA")
    sixteen = Image.fromarray((grey.astype(np.uint16) * 257))  # the same grey values, 16 bits: I;16
    assert sixteen.mode == "I;16"
    raw = raw_layer_of(tmp_path, [("png", encoded(la)), ("png", encoded(sixteen)), ("png", encoded(Image.fromarray(grey, "L")))])
    preprocess_layer(raw, tmp_path / "pre", PIPELINE, "none")
    out = tensors(tmp_path / "pre")
    # LA with an opaque alpha, 16-bit grey and 8-bit grey are the same picture: the same tensor.
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[1], out[2])
    assert out[1].min() < 100 and out[1].max() > 150  # not flat white


def test_16_bit_grey_is_scaled_not_clipped():
    values = np.linspace(0, 65535, W * H).reshape(H, W).astype(np.uint16)
    image = decode_image(encoded(Image.fromarray(values)))
    assert image.mode == "I;16"
    out = CropResizePipeline(crop=(0, 0, W, H), resize=16, resample="nearest").process_image(image)
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 100 // 2
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert set(np.unique(out)) <= set(np.unique(expected))


def test_grey_alpha_drops_alpha_after_resizing_like_rgba():
    la = Image.fromarray(noise(2, seed=3), "LA")
    out = PIPELINE.process_image(la)
    reference = np.asarray(la.resize((16, 16), Image.Resampling.BICUBIC))[..., 0]  # Pillow resizes LA premultiplied
    np.testing.assert_array_equal(out, np.stack([reference] * 3, axis=-1))


@pytest.mark.parametrize("make, convert", [
    (lambda: Image.fromarray(noise(3, seed=1), "RGB").convert("P", palette=Image.Palette.ADAPTIVE), "RGBA"),
    (lambda: Image.fromarray(noise(None, seed=2) > 128).convert("1"), "L"),
    (lambda: Image.fromarray(noise(4, seed=4), "CMYK"), "RGB"),
    (lambda: Image.fromarray(noise(3, seed=5), "RGB").convert("YCbCr"), "RGB"),
], ids=["P", "1", "CMYK", "YCbCr"])
def test_palette_bilevel_cmyk_and_ycbcr_use_pillows_conversion(make, convert: str):
    image = make()
    ours = PIPELINE.process_image(image)
    reference = PIPELINE.process_image(image.convert(convert))
    np.testing.assert_array_equal(ours, reference)
    assert ours.shape == (16, 16, 3) and ours.dtype == np.uint8


@pytest.mark.parametrize("array, mode", [
    (noise(None, dtype=np.float32) / 255.0, "F"),
    (noise(None, dtype=np.int32, high=1 << 20), "I"),
], ids=["F", "I"])
def test_float_and_32_bit_integer_cards_are_refused_naming_the_item(tmp_path: Path, array: np.ndarray, mode: str):
    image = Image.fromarray(array)
    assert image.mode == mode
    raw = raw_layer_of(tmp_path, [("png", encoded(Image.fromarray(noise(3), "RGB"))), ("tif", encoded(image, "TIFF"))])
    with pytest.raises(PipelineError, match=rf"item id 101 in .*raw/00000.h5: image mode {mode} \(32-bit "
                                            r".*has no defined 0–255 range"):
        preprocess_layer(raw, tmp_path / "pre", PIPELINE, "none")


def test_regions_and_letterbox_follow_the_same_rules():
    values = (noise(None).astype(np.uint16) * 257)
    sixteen, eight = Image.fromarray(values), Image.fromarray(noise(None), "L")
    letterbox = LetterboxPipeline(resize=32, fill=114, resample="bilinear")
    np.testing.assert_array_equal(letterbox.process_image(sixteen), letterbox.process_image(eight))
    la = Image.fromarray(np.dstack([noise(None), np.full((H, W), 255, np.uint8)]), "LA")
    np.testing.assert_array_equal(letterbox.process_image(la), letterbox.process_image(eight))
    with pytest.raises(ValueError, match="image mode F"):
        PadRegionsPipeline().process_image(Image.fromarray(noise(None, dtype=np.float32)))


def test_an_image_smaller_than_the_pipeline_needs_is_refused_naming_the_item(tmp_path: Path):
    # pad_nn crops (71, 359, 707, 849): Pillow would pad a 1×1 card with black and give an all-black tensor.
    card = Image.new("RGB", (730, 1220), (90, 120, 200))  # the size of a rectified PAD card
    raw = raw_layer_of(tmp_path, [("png", encoded(card)), ("png", encoded(Image.new("RGB", (1, 1), (200, 30, 30))))])
    pad_nn = CropResizePipeline(resize=32, resample="bicubic")
    with pytest.raises(PipelineError, match=r"item id 101 in .*raw/00000.h5: the image is 1×1, smaller than the "
                                            r"707×849 this crop_resize pipeline needs"):
        preprocess_layer(raw, tmp_path / "pre", pad_nn, "none")
    assert not (tmp_path / "pre" / "index.json").exists()


def test_an_empty_raw_layer_is_never_preprocessed_into_an_empty_layer(tmp_path: Path):
    from evalstack.core.kinds import RAW_KIND
    from evalstack.core.layers import LayerWriter

    config = FetchConfig({"dev": "metadata_dev.csv"})
    LayerWriter(tmp_path / "raw", RAW_KIND, config.layer_key()).finish()  # e.g. pulled from someone's remote
    with pytest.raises(PipelineError, match=r"raw holds no items: there is nothing to preprocess"):
        preprocess_layer(tmp_path / "raw", tmp_path / "pre", PIPELINE, "none")
    assert not (tmp_path / "pre" / "index.json").exists()
