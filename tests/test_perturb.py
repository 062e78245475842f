"""Each perturbation against its formula (the reference's code or the PAD definition); pixel-for-pixel equality
with imagecorruptions itself is tests/test_corruption_fidelity.py."""
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


def rng() -> np.random.RandomState:
    return np.random.RandomState(RNG_SEED)


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
    motion = p.motion_kernel(10, 3)
    assert motion.shape == (21,) and motion.sum() == pytest.approx(1.0)
    assert (np.diff(motion) < 0).all()  # one-sided Gaussian weights fall along the line
    assert p.motion_shifts(10, 0.0, (100, 100)) == [(0, -i) for i in range(21)]  # at 0°: a horizontal line
    assert p.motion_shifts(10, 0.0, (100, 8)) == [(0, -i) for i in range(8)]  # stops where it leaves the image


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
    if kind != "frost":  # frost trades image weight for ice weight; its own test checks the blend
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


@pytest.mark.parametrize("severity", p.SEVERITIES)
def test_impulse_and_speckle_noise_follow_imagenet_c(severity: int):
    x = image()
    draws = np.random.default_rng(rng().randint(2**31))  # skimage's Generator, seeded from the item's stream
    flipped = draws.random(x.shape) <= p.IMPULSE_NOISE[severity - 1]
    salted = draws.random(x.shape) <= 0.5
    expected = unit(x).copy()
    expected[flipped & salted], expected[flipped & ~salted] = 1.0, 0.0
    assert np.array_equal(p.impulse_noise(x, severity, rng()), saved(expected))
    c = p.SPECKLE_NOISE[severity - 1]
    expected = saved(unit(x) + unit(x) * rng().normal(size=x.shape, scale=c))
    assert np.array_equal(p.speckle_noise(x, severity, rng()), expected)


def _glass_reference(x: np.ndarray, severity: int, draws: np.random.RandomState) -> np.ndarray:
    """The reference's glass blur loop, pixel by pixel, its "swap" through numpy views included."""
    sigma, delta, iterations = p.GLASS_BLUR[severity - 1]
    blur = lambda a: gaussian_filter(a, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)  # noqa: E731
    out = np.uint8(blur(unit(x)) * 255)
    height, width = x.shape[:2]
    for _ in range(iterations):
        for h in range(height - delta, delta, -1):
            for w in range(width - delta, delta, -1):
                dx, dy = draws.randint(-delta, delta, size=(2,))
                out[h, w], out[h + dy, w + dx] = out[h + dy, w + dx], out[h, w]
    return saved(blur(out / 255.0))


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_glass_blur_equals_the_sequential_pixel_loop(severity: int):
    x = image(20, 18)
    assert np.array_equal(p.glass_blur(x, severity, rng()), _glass_reference(x, severity, rng()))


def test_glass_blur_copies_neighbours_without_swapping():
    """One pass on a 6×6 grid with delta 2 (offsets −2…1): a visited pixel takes its neighbour's current value,
    the neighbour's new one if the loop visited it before, and nothing is written back to the neighbour."""
    offsets = np.array([[1, 1], [1, 0], [-1, -2], [0, 1]])  # (dx, dy) for (4,4) (4,3) (3,4) (3,3), in visiting order
    sources = p._glass_sources(6, 6, 2, offsets).reshape(6, 6)
    expected = np.arange(36).reshape(6, 6)
    expected[4, 4] = 5 * 6 + 5  # (5,5), never visited: it keeps its own value, no swap
    expected[4, 3] = expected[4, 4]  # (4,4) was visited before: its new value
    expected[3, 4] = 1 * 6 + 3  # (1,3), never visited
    expected[3, 3] = expected[4, 3]  # (4,3): two links deep
    assert sources.tolist() == expected.tolist()


def test_zoom_blur_averages_centre_zooms_and_clipped_zoom_by_one_is_identity():
    x = unit(image()).astype(np.float32)
    assert np.array_equal(p.clipped_zoom(x, 1.0), x)
    assert p.clipped_zoom(x, 1.3).shape[:2] >= x.shape[:2]  # at least x's size: callers crop
    stop, step = p.ZOOM_BLUR[0]
    zooms = [p.clipped_zoom(x, f)[:24, :32] for f in np.arange(1, stop, step)]
    assert np.array_equal(p.zoom_blur(image(), 1, rng()), saved((x + np.sum(zooms, axis=0)) / (len(zooms) + 1)))


def test_saturate_scales_hsv_saturation_keeping_hue_and_value():
    x = image(4, 5)
    out = p.saturate(x, 4, rng())
    scale, shift = p.SATURATE[3]
    for pixel, result in zip(x.reshape(-1, 3), out.reshape(-1, 3)):
        h, s, v = colorsys.rgb_to_hsv(*(pixel / 255))
        expected = saved(np.array(colorsys.hsv_to_rgb(h, min(s * scale + shift, 1.0), v)))
        assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1
    hsv = p.rgb_to_hsv(unit(image()))
    np.testing.assert_allclose(p.hsv_to_rgb(hsv), unit(image()), atol=1e-12)


def test_elastic_transform_moves_pixels_by_a_smooth_field_and_keeps_flat_images():
    flat = np.full((30, 30, 3), 77, np.uint8)
    assert np.abs(p.elastic_transform(flat, 5, rng()).astype(int) - 77).max() <= 1
    x = np.asarray(Image.fromarray(image(48, 48)).filter(ImageFilter.GaussianBlur(2)))
    assert not np.array_equal(p.elastic_transform(x, 5, rng()), x)


def test_frost_blends_a_crop_of_a_reference_photograph():
    x = np.zeros((40, 50, 3), np.uint8)
    draws = rng()
    photo = p.frost_photo(draws.randint(5))
    assert photo.ndim == 3 and photo.shape[0] > 300  # a photograph, BGR as cv2.imread gives it
    ice = p.frost(x, 2, rng()).astype(float) / p.FROST[1][1]  # a black image leaves frost weight × the crop
    assert ice.std() > 5 and ice.max() <= 255.5


def test_frost_without_the_reference_photographs_says_how_to_install_them(tmp_path, monkeypatch):
    (tmp_path / "frost").mkdir()
    (tmp_path / "frost" / "frost1.png").write_bytes(b"not the photograph")
    monkeypatch.setattr(p, "frost_photo_dir", lambda: tmp_path / "frost")
    p.frost_photo.cache_clear()
    try:
        for index in (0, 1):  # altered, then missing
            fix = "pip install --no-deps --force-reinstall imagecorruptions==1.1.2"
            with pytest.raises(p.PerturbationError, match=rf"frost{index + 1}.png is missing or not .*: {fix}"):
                p.frost_photo(index)
    finally:
        p.frost_photo.cache_clear()


def test_snow_frost_and_spatter_lighten_or_cover_the_image():
    x = np.full((40, 40, 3), 60, np.uint8)
    assert p.snow(x, 3, rng()).mean() > x.mean() and p.frost(x, 3, rng()).mean() > 0.7 * x.mean()
    water, mud = p.spatter(x, 2, rng()), p.spatter(x, 5, rng())
    assert (water.astype(int) >= x).all() and (mud.astype(int) != x).any()


def test_imagenet_c_lists_name_registered_types():
    assert len(p.IMAGENET_C) == 15 and len(p.IMAGENET_C_EXTRA) == 4
    assert set(p.IMAGENET_C + p.IMAGENET_C_EXTRA) <= set(p.PERTURBATIONS)
