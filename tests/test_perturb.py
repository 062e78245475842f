"""Each perturbation against its formula (ImageNet-C's reference code or the PAD definition)."""
import colorsys
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy.ndimage import gaussian_filter

from evalstack.preprocess import perturbations as p

RNG_SEED = 7


def image(height: int = 24, width: int = 32) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / 255


def saved(x: np.ndarray) -> np.ndarray:
    return np.uint8(np.clip(x, 0, 1) * 255)


@pytest.mark.parametrize("severity", p.SEVERITIES)
def test_gaussian_and_shot_noise_follow_imagenet_c(severity: int):
    x = image()
    c = p.GAUSSIAN_NOISE[severity - 1]
    expected = saved(unit(x) + rng().normal(size=x.shape, scale=c))
    assert np.array_equal(p.gaussian_noise(x, severity, rng()), expected)
    c = p.SHOT_NOISE[severity - 1]
    assert np.array_equal(p.shot_noise(x, severity, rng()), saved(rng().poisson(unit(x) * c) / c))


def test_contrast_scales_around_the_channel_means():
    x = image()
    means = unit(x).mean(axis=(0, 1), keepdims=True)
    assert np.array_equal(p.contrast(x, 3, rng()), saved((unit(x) - means) * 0.2 + means))


def test_brightness_adds_to_hsv_value_keeping_hue_and_saturation():
    x = image(4, 5)
    out = p.brightness(x, 2, rng())
    for pixel, result in zip(x.reshape(-1, 3), out.reshape(-1, 3)):
        h, s, v = colorsys.rgb_to_hsv(*(pixel / 255))
        expected = saved(np.array(colorsys.hsv_to_rgb(h, s, min(v + 0.2, 1.0))))
        assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1  # float rounding at truncation


def test_jpeg_is_a_pillow_round_trip_at_the_table_quality():
    x = image()
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, "JPEG", quality=p.JPEG_QUALITY[4])
    assert np.array_equal(p.jpeg(x, 5, rng()), np.asarray(Image.open(buffer).convert("RGB")))


def test_pixelate_makes_blocks_of_the_table_size():
    x = image(40, 40)
    out = p.pixelate(x, 5, rng())  # c = 0.25: a 10×10 image scaled back, 4×4 blocks
    assert np.array_equal(out, np.repeat(np.repeat(out[::4, ::4], 4, axis=0), 4, axis=1))


def test_blurs_keep_flat_images_and_smooth_edges():
    flat = np.full((32, 32, 3), 120, np.uint8)
    edge = np.zeros((32, 32, 3), np.uint8)
    edge[:, 16:] = 255
    for blur in (p.gaussian_blur, p.defocus_blur, p.motion_blur):
        assert np.abs(blur(flat, 3, rng()).astype(int) - 120).max() <= 1, blur.__name__
        row = blur(edge, 3, rng())[16, 12:20, 0]
        assert ((row > 0) & (row < 255)).any(), blur.__name__  # the edge is spread (one-sided for motion)
    sigma = p.GAUSSIAN_BLUR[1]
    expected = saved(gaussian_filter(unit(edge), sigma=(sigma, sigma, 0), mode="nearest"))
    assert np.array_equal(p.gaussian_blur(edge, 2, rng()), expected)


def test_defocus_and_motion_kernels_are_normalised_and_shaped():
    disk = p.disk_kernel(6, 0.5)
    assert disk.sum() == pytest.approx(1.0) and disk[8, 8] > 0 and disk[0, 0] == 0  # 17×17, zero outside the disk
    motion = p.motion_kernel(10, 3, 0.0)
    assert motion.sum() == pytest.approx(1.0)
    assert np.count_nonzero(motion) == 11 and np.count_nonzero(motion[10]) == 11  # one-sided horizontal line
    assert motion[10, 10] > motion[10, 20]  # Gaussian weights fall along the line


def test_fog_adds_a_normalised_plasma_map():
    plasma = p.plasma_fractal(32, 2.0, rng())
    assert plasma.min() == 0 and plasma.max() == 1
    x = image(20, 30)
    strength, decay = p.FOG[0]
    max_val = unit(x).max()
    expected = saved((unit(x) + strength * p.plasma_fractal(32, decay, rng())[:20, :30][..., None]) * max_val
                     / (max_val + strength))
    assert np.array_equal(p.fog(x, 1, rng()), expected)


def test_pad_white_balance_and_lighting_gradient_formulas():
    x = np.full((10, 10, 3), 100, np.uint8)
    shift = p.WHITE_BALANCE[2] * rng().choice([-1.0, 1.0])
    assert tuple(p.white_balance(x, 3, rng())[0, 0]) == tuple(saved(100 / 255 * np.array([1 + shift, 1, 1 - shift])))
    out = p.lighting_gradient(x, 5, rng()).astype(int)[..., 0]
    assert out.max() == saved(100 / 255 * 1.5) and out.min() == saved(100 / 255 * 0.5)  # ±a at opposite corners


def test_rotate_shift_moves_the_card_a_little():
    x = np.zeros((40, 40, 3), np.uint8)
    x[10:30, 10:30] = 255
    out = p.rotate_shift(x, 5, rng())
    assert not np.array_equal(out, x)
    assert abs(int((out > 127).sum()) - int((x > 127).sum())) < 0.2 * (x > 127).sum()  # moved, not destroyed


@pytest.mark.parametrize("kind", sorted(p.PERTURBATIONS))
def test_every_type_is_deterministic_per_item_and_grows_with_severity(kind: str):
    x = np.asarray(Image.fromarray(image(48, 48)).filter(ImageFilter.GaussianBlur(2)))  # some structure to blur
    outs = [p.perturb(x, kind, s, "item-1", 0) for s in p.SEVERITIES]
    assert all(o.dtype == np.uint8 and o.shape == x.shape for o in outs)
    assert np.array_equal(outs[2], p.perturb(x, kind, 3, "item-1", 0))
    distance = [np.abs(o.astype(float) - x).mean() for o in outs]
    assert distance[4] > distance[0], distance
    assert distance[0] > 0


def test_randomness_depends_on_item_type_severity_and_seed_only():
    draws = lambda *args: p.item_rng(*args).random(4).tolist()  # noqa: E731
    base = draws("item", "fog", 2, 0)
    assert base == draws("item", "fog", 2, 0)
    assert all(base != draws(*args) for args in [("other", "fog", 2, 0), ("item", "jpeg", 2, 0),
                                                 ("item", "fog", 3, 0), ("item", "fog", 2, 1)])


def test_bad_input_names_the_item():
    with pytest.raises(p.PerturbationError, match="item k1: expected an"):
        p.perturb(np.zeros((4, 4)), "fog", 1, "k1", 0)
