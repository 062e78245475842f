"""Image perturbations at severities 1–5 (pure functions of (image, severity, rng)).

The ImageNet-C ones follow Hendrycks & Dietterich's reference code
(github.com/hendrycks/robustness, `make_imagenet_c.py`): same parameter tables,
same formulas, with their global `np.random` replaced by a seeded Generator and
OpenCV/Wand/scikit-image calls replaced by scipy/Pillow equivalents. Sizes that
ImageNet-C ties to 224 px (pixelate, fog's map) scale with the image; glass blur,
zoom blur, snow, elastic transform and spatter take the any-size forms of
Michaelis et al.'s COCO-C code (`imagecorruptions`), which is what detection
benchmarks use. All 15 ImageNet-C types and its 4 extra ones are here; `frost`
blends a procedural ice texture, because ImageNet-C's six frost photographs are
not shipped (its figures are therefore not comparable with published frost numbers).
The PAD ones (white balance, lighting gradient, card rotation/shift) model what
differs between phone photos of a card. Input and output: uint8 (H, W, 3).

Cached perturbed predictions are keyed by the code fingerprint of this module (see
core/fingerprint.py): editing a perturbation changes the key, with nothing to bump.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.ndimage import convolve1d, gaussian_filter

SEVERITIES = (1, 2, 3, 4, 5)

GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT_NOISE = (60, 25, 12, 5, 3)
GAUSSIAN_BLUR = (1, 2, 3, 4, 6)
DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # (disk radius, alias blur sigma)
MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # (radius, sigma), angle ~ U(-45°, 45°)
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to HSV value
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
JPEG_QUALITY = (25, 18, 15, 10, 7)
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)
FOG = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))  # (strength, wibble decay)
WHITE_BALANCE = (0.05, 0.1, 0.15, 0.2, 0.3)  # red/blue gain shift, warm or cool
LIGHTING_GRADIENT = (0.1, 0.2, 0.3, 0.4, 0.5)  # brightness swing across the card
ROTATE_SHIFT = ((1.0, 0.01), (2.0, 0.02), (3.0, 0.03), (4.0, 0.04), (5.0, 0.05))  # (max degrees, max shift / size)
IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)  # share of values set to 0 or 1 (salt and pepper, half each)
SPECKLE_NOISE = (0.15, 0.2, 0.35, 0.45, 0.6)
GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1.0, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # (sigma, max delta, iterations)
ZOOM_BLUR = ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03))  # zooms np.arange(1, stop, step)
SNOW = (  # (mean, std, zoom, threshold, blur radius, blur sigma, image weight)
    (0.1, 0.3, 3.0, 0.5, 10, 4, 0.8), (0.2, 0.3, 2.0, 0.5, 12, 4, 0.7), (0.55, 0.3, 4.0, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)
FROST = ((1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # (image weight, frost weight)
ELASTIC = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)  # displacement scale (alpha)
SPATTER = (  # (mean, std, sigma, threshold, intensity, mud): water drops at 1–3, mud at 4–5
    (0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
    (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1),
)
SATURATE = ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2))  # HSV saturation · a + b

Perturbation = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


class PerturbationError(ValueError):
    """An unknown perturbation type or severity."""


def _unit(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    # ImageNet-C saves with np.uint8(np.clip(x, 0, 1) * 255), i.e. truncation
    return np.uint8(np.clip(unit, 0.0, 1.0) * 255)


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    x = _unit(image)
    return _to_uint8(x + rng.normal(size=x.shape, scale=GAUSSIAN_NOISE[severity - 1]))


def shot_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = SHOT_NOISE[severity - 1]
    return _to_uint8(rng.poisson(_unit(image) * c) / c)


def gaussian_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = GAUSSIAN_BLUR[severity - 1]
    return _to_uint8(gaussian_filter(_unit(image), sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0))


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's `disk`: an aliased disk, normalised, then cv2.GaussianBlur'd with a 3×3
    (5×5 above radius 8) window and reflect-101 borders."""
    half = max(8, int(np.ceil(radius)))
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    disk = ((x**2 + y**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    taps = np.exp(-((np.arange(ksize) - ksize // 2) ** 2) / (2 * alias_blur**2))
    taps /= taps.sum()
    blurred = convolve1d(disk, taps, axis=0, mode="mirror")
    return convolve1d(blurred, taps, axis=1, mode="mirror")


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve  # imported here: scipy.signal costs seconds, most importers never blur

    pad = max(kernel.shape) // 2
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")  # cv2's BORDER_REFLECT_101
    out = np.stack([fftconvolve(padded[..., c], kernel, mode="same") for c in range(x.shape[2])], axis=-1)
    return out[pad:-pad, pad:-pad]


def defocus_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, alias = DEFOCUS_BLUR[severity - 1]
    return _to_uint8(_convolve(_unit(image), disk_kernel(radius, alias)))


def motion_kernel(radius: int, sigma: float, angle_degrees: float) -> np.ndarray:
    """Wand's motion blur: one-sided Gaussian weights along a line at `angle_degrees`."""
    size = 2 * radius + 1
    kernel = np.zeros((size, size))
    theta = np.deg2rad(angle_degrees)
    for step in range(radius + 1):
        row = radius + int(round(step * np.sin(theta)))
        col = radius + int(round(step * np.cos(theta)))
        kernel[row, col] += np.exp(-(step**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def motion_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = MOTION_BLUR[severity - 1]
    kernel = motion_kernel(radius, sigma, rng.uniform(-45, 45))
    return _to_uint8(_convolve(_unit(image), kernel))


def brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """HSV value + c, clipped: H and S are kept, so RGB scales by V'/V (grey when V = 0)."""
    x = _unit(image)
    value = x.max(axis=2, keepdims=True)
    new_value = np.clip(value + BRIGHTNESS[severity - 1], 0.0, 1.0)
    scaled = np.where(value > 0, x * new_value / np.where(value > 0, value, 1.0), new_value)
    return _to_uint8(scaled)


def contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    x = _unit(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8((x - means) * CONTRAST[severity - 1] + means)


def jpeg(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, "JPEG", quality=JPEG_QUALITY[severity - 1])
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.uint8)


def pixelate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    c = PIXELATE[severity - 1]
    small = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize(
        (max(1, int(width * c)), max(1, int(height * c))), Image.Resampling.BOX
    )
    return np.asarray(small.resize((width, height), Image.Resampling.BOX), dtype=np.uint8)


def plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """ImageNet-C's diamond-square height map in [0, 1], `mapsize` a power of two."""
    if mapsize & (mapsize - 1):
        raise PerturbationError(f"plasma map size {mapsize} is not a power of two")
    maparray = np.zeros((mapsize, mapsize), dtype=np.float64)
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(square)
        drg = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        dgg = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        ldrsum = drg + np.roll(drg, 1, axis=0)
        lulsum = dgg + np.roll(dgg, -1, axis=1)
        ltsum = ldrsum + lulsum + np.roll(lulsum, 1, axis=0)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(ltsum)
        tdrsum = drg + np.roll(drg, 1, axis=1)
        tulsum = dgg + np.roll(dgg, -1, axis=0)
        ttsum = tdrsum + tulsum + np.roll(tulsum, 1, axis=1)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def fog(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    strength, decay = FOG[severity - 1]
    x = _unit(image)
    height, width = x.shape[:2]
    mapsize = 1 << int(np.ceil(np.log2(max(height, width, 2))))
    max_val = x.max()
    x = x + strength * plasma_fractal(mapsize, decay, rng)[:height, :width][..., None]
    return _to_uint8(x * max_val / (max_val + strength))


def white_balance(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Red and blue gains moved apart by ±c (a warmer or cooler light), green kept."""
    shift = WHITE_BALANCE[severity - 1] * rng.choice([-1.0, 1.0])
    gains = np.array([1.0 + shift, 1.0, 1.0 - shift])
    return _to_uint8(_unit(image) * gains)


def lighting_gradient(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Brightness × (1 + a·t), t from −1 to 1 across the image in a random direction."""
    height, width = image.shape[:2]
    theta = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width]
    along = (x - (width - 1) / 2) * np.cos(theta) + (y - (height - 1) / 2) * np.sin(theta)
    t = along / max(np.abs(along).max(), 1e-9)
    return _to_uint8(_unit(image) * (1.0 + LIGHTING_GRADIENT[severity - 1] * t)[..., None])


def rotate_shift(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A small card rotation (up to ±degrees) and shift (up to ±fraction of the size); edges repeat the mean colour."""
    max_degrees, max_shift = ROTATE_SHIFT[severity - 1]
    height, width = image.shape[:2]
    angle = rng.uniform(-max_degrees, max_degrees)
    dx, dy = rng.uniform(-max_shift, max_shift, 2) * (width, height)
    fill = tuple(int(v) for v in np.asarray(image).reshape(-1, 3).mean(axis=0))
    moved = Image.fromarray(np.asarray(image, dtype=np.uint8)).rotate(
        angle, Image.Resampling.BILINEAR, translate=(round(dx), round(dy)), fillcolor=fill
    )
    return np.asarray(moved, dtype=np.uint8)


def impulse_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """scikit-image's `random_noise(mode="s&p")`: each value flipped with probability c, to 1 or 0 alike."""
    x = _unit(image)
    flipped = rng.random(x.shape) < IMPULSE_NOISE[severity - 1]
    salted = rng.random(x.shape) < 0.5
    return _to_uint8(np.where(flipped, salted.astype(np.float64), x))


def speckle_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    x = _unit(image)
    return _to_uint8(x + x * rng.normal(size=x.shape, scale=SPECKLE_NOISE[severity - 1]))


def _blur(unit: np.ndarray, sigma: float) -> np.ndarray:
    """scikit-image's `gaussian(..., channel_axis=-1)`: per channel, nearest-edge, truncated at 4 sigma."""
    return gaussian_filter(unit, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)


def glass_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, swap every pixel with a random neighbour (sequentially, bottom-right to top-left), blur again."""
    sigma, delta, iterations = GLASS_BLUR[severity - 1]
    blurred = np.uint8(_blur(_unit(image), sigma) * 255)
    height, width = blurred.shape[:2]
    rows, cols = np.meshgrid(np.arange(height - delta, delta, -1), np.arange(width - delta, delta, -1), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    source = list(range(height * width))  # which original pixel sits at each position
    for _ in range(iterations):
        offsets = rng.integers(-delta, delta, size=(len(rows), 2))  # (dx, dy) per visited pixel, in visiting order
        here = (rows * width + cols).tolist()
        there = ((rows + offsets[:, 1]) * width + cols + offsets[:, 0]).tolist()
        for a, b in zip(here, there):  # each swap sees the previous ones: inherently sequential
            source[a], source[b] = source[b], source[a]
    shuffled = blurred.reshape(-1, blurred.shape[2])[source].reshape(blurred.shape)
    return _to_uint8(_blur(shuffled / 255.0, sigma))


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by `factor` (linear interpolation), cropped back to x's size from the top left."""
    height, width = x.shape[:2]
    crop_h, crop_w = int(np.ceil(height / factor)), int(np.ceil(width / factor))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = x[top : top + crop_h, left : left + crop_w]
    # Channel by channel: the same values as one (factor, factor, 1) zoom, several times faster.
    zoomed = np.stack([ndimage.zoom(crop[..., c], factor, order=1) for c in range(x.shape[2])], axis=-1)
    out = np.zeros_like(x)
    h, w = min(height, zoomed.shape[0]), min(width, zoomed.shape[1])
    out[:h, :w] = zoomed[:h, :w]
    return out


def zoom_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    stop, step = ZOOM_BLUR[severity - 1]
    x = _unit(image).astype(np.float32)
    factors = np.arange(1, stop, step)
    out = np.zeros_like(x)
    for factor in factors:
        out += clipped_zoom(x, float(factor))
    return _to_uint8((x + out) / (len(factors) + 1))


def _grey(unit: np.ndarray) -> np.ndarray:
    """OpenCV's RGB2GRAY weights."""
    return unit @ np.asarray([0.299, 0.587, 0.114], dtype=unit.dtype)


def snow(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Zoomed, thresholded noise streaked by a motion blur, added twice (once upside down) over a whitened image."""
    mean, std, zoom, threshold, radius, sigma, weight = SNOW[severity - 1]
    x = _unit(image).astype(np.float32)
    flakes = rng.normal(size=x.shape[:2], loc=mean, scale=std)
    flakes = clipped_zoom(flakes[..., None], zoom)
    flakes[flakes < threshold] = 0
    flakes = np.clip(flakes, 0, 1)
    flakes = _convolve(flakes, motion_kernel(radius, sigma, rng.uniform(-135, -45)))
    flakes = np.round(np.clip(flakes, 0, 1) * 255) / 255.0
    x = weight * x + (1 - weight) * np.maximum(x, _grey(x)[..., None] * 1.5 + 0.5)
    return _to_uint8(x + flakes + np.rot90(flakes, k=2))


def frost_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural ice layer, 0–255 (H, W, 3): a cloudy fractal base with short bright needle crystals, bluish white."""
    mapsize = 1 << int(np.ceil(np.log2(max(height, width, 2))))
    cloud = plasma_fractal(mapsize, 1.8, rng)[:height, :width]
    needles = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(needles)
    count = max(8, height * width // 60)
    starts = rng.uniform(0, 1, size=(count, 2)) * (width, height)
    angles = rng.uniform(0, np.pi, size=count)
    lengths = rng.uniform(2, 0.08 * max(height, width) + 3, size=count)
    brightness = rng.uniform(90, 255, size=count)
    for (x0, y0), angle, length, level in zip(starts, angles, lengths, brightness):
        draw.line((x0, y0, x0 + length * np.cos(angle), y0 + length * np.sin(angle)), fill=int(level), width=1)
    crystals = gaussian_filter(np.asarray(needles, dtype=np.float64) / 255.0, 0.6)
    ice = np.clip(0.25 + 0.45 * cloud + 1.2 * crystals, 0.0, 1.0)[..., None]
    return ice * np.asarray([0.86, 0.93, 1.0]) * 255.0


def frost(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    image_weight, frost_weight = FROST[severity - 1]
    x = np.asarray(image, dtype=np.float64)
    ice = frost_texture(x.shape[0], x.shape[1], rng)
    return np.uint8(np.clip(image_weight * x + frost_weight * ice, 0, 255))


def elastic_transform(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random displacement fields (sigma 1 % of the size), bilinear resampling with reflected edges."""
    x = _unit(image).astype(np.float32)
    height, width = x.shape[:2]
    sigma = np.asarray([height, width]) * 0.01
    alpha, max_shift = ELASTIC[severity - 1], height * 0.005
    dx, dy = (
        (gaussian_filter(rng.uniform(-max_shift, max_shift, size=(height, width)), sigma, mode="reflect", truncate=3)
         * alpha).astype(np.float32)
        for _ in range(2)
    )
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coords = np.stack([(rows + dy).reshape(-1), (cols + dx).reshape(-1)])
    out = np.stack([ndimage.map_coordinates(x[..., c], coords, order=1, mode="reflect").reshape(height, width)
                    for c in range(x.shape[2])], axis=-1)
    return _to_uint8(out)


def _canny(grey: np.ndarray, low: float, high: float) -> np.ndarray:
    """OpenCV's Canny (3×3 Sobel, L1 gradient, 4-direction non-maximum suppression, 8-connected hysteresis)."""
    g = grey.astype(np.float64)
    gx, gy = ndimage.sobel(g, axis=1, mode="mirror"), ndimage.sobel(g, axis=0, mode="mirror")
    magnitude = np.abs(gx) + np.abs(gy)
    direction = (np.round(np.arctan2(gy, gx) / (np.pi / 4)) % 4).astype(int)  # 0: →, 1: ↘, 2: ↓, 3: ↙
    padded = np.pad(magnitude, 1)
    height, width = g.shape
    steps = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    peak = np.zeros_like(magnitude, dtype=bool)
    for code, (dy, dx) in steps.items():
        ahead = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        behind = padded[1 - dy : 1 - dy + height, 1 - dx : 1 - dx + width]
        peak |= (direction == code) & (magnitude > behind) & (magnitude >= ahead)
    weak = peak & (magnitude > low)
    labels, _ = ndimage.label(weak, structure=np.ones((3, 3)))
    strong = np.unique(labels[peak & (magnitude > high)])
    return np.isin(labels, strong[strong > 0])


def _equalize(values: np.ndarray) -> np.ndarray:
    """OpenCV's equalizeHist on uint8."""
    hist = np.bincount(values.reshape(-1), minlength=256)
    first = int(np.flatnonzero(hist)[0])
    if hist[first] == values.size:
        return np.full_like(values, first)
    scale = 255.0 / (values.size - hist[first])
    lut = np.clip(np.round(np.cumsum(hist) * scale - hist[first] * scale), 0, 255).astype(np.uint8)
    lut[first] = 0
    return lut[values]


def spatter(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Water drops (severities 1–3: thresholded blurred noise, edge-shaded, pale turquoise) or mud (4–5)."""
    mean, std, sigma, threshold, intensity, mud = SPATTER[severity - 1]
    x = _unit(image).astype(np.float32)
    liquid = gaussian_filter(rng.normal(size=x.shape[:2], loc=mean, scale=std), sigma, mode="nearest", truncate=4.0)
    liquid[liquid < threshold] = 0
    if not mud:
        layer = (liquid * 255).astype(np.uint8)
        distance = np.minimum(ndimage.distance_transform_edt(~_canny(layer, 50, 150)), 20)
        distance = _equalize(ndimage.uniform_filter(distance, 3, mode="mirror").astype(np.uint8))
        shading = np.asarray([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float64)
        distance = np.clip(np.round(ndimage.correlate(distance.astype(np.float64), shading, mode="mirror")), 0, 255)
        distance = ndimage.uniform_filter(distance, 3, mode="mirror")
        drops = layer * distance
        drops = drops / max(float(drops.max()), 1e-12) * intensity
        water = np.asarray([175, 238, 238], dtype=np.float32) / 255.0
        return _to_uint8(x + drops[..., None] * water)
    mask = gaussian_filter((liquid > threshold).astype(np.float32), intensity, mode="nearest", truncate=4.0)
    mask[mask < 0.8] = 0
    brown = np.asarray([63, 42, 20], dtype=np.float32) / 255.0
    return _to_uint8(x * (1 - mask[..., None]) + mask[..., None] * brown)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(…, 3) RGB in 0–1 → HSV in 0–1 (scikit-image's and colorsys' formulas)."""
    maximum, minimum = rgb.max(axis=-1), rgb.min(axis=-1)
    delta = maximum - minimum
    safe = np.where(delta > 0, delta, 1.0)
    r, g, b = (rgb[..., i] for i in range(3))
    hue = np.where(maximum == r, (g - b) / safe, np.where(maximum == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = np.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
    saturation = np.where(maximum > 0, delta / np.where(maximum > 0, maximum, 1.0), 0.0)
    return np.stack([hue, saturation, maximum], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = (hsv[..., i] for i in range(3))
    sector = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    return np.stack([np.choose(sector, [c[i] for c in choices]) for i in range(3)], axis=-1)


def saturate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    scale, shift = SATURATE[severity - 1]
    hsv = rgb_to_hsv(_unit(image))
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0, 1)
    return _to_uint8(hsv_to_rgb(hsv))


PERTURBATIONS: dict[str, Perturbation] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "brightness": brightness,
    "contrast": contrast,
    "jpeg": jpeg,
    "pixelate": pixelate,
    "fog": fog,
    "white_balance": white_balance,
    "lighting_gradient": lighting_gradient,
    "rotate_shift": rotate_shift,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "glass_blur": glass_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "elastic_transform": elastic_transform,
    "spatter": spatter,
    "saturate": saturate,
}
# ImageNet-C's 15 (the COCO-C benchmark's) and its 4 extra types; the rest are PAD's.
IMAGENET_C = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
              "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg")
IMAGENET_C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


@dataclass(frozen=True)
class Cell:
    """One cell of a perturbation grid (classification or detection): a type at a severity."""

    kind: str
    severity: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.severity}"


def check(kind: str, severity: int) -> None:
    if kind not in PERTURBATIONS:
        raise PerturbationError(f"perturbation {kind!r} unknown; choose from {sorted(PERTURBATIONS)}")
    if severity not in SEVERITIES:
        raise PerturbationError(f"severity {severity!r} out of range 1–5 (perturbation {kind})")


def item_rng(item_key: str, kind: str, severity: int, seed: int) -> np.random.Generator:
    """The same (item, type, severity, seed) always draws the same numbers, whatever else runs."""
    digest = hashlib.sha256(f"{item_key}\0{kind}\0{severity}\0{seed}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def perturb(image: np.ndarray, kind: str, severity: int, item_key: str, seed: int) -> np.ndarray:
    check(kind, severity)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise PerturbationError(f"item {item_key}: expected an (H, W, 3) image, got shape {array.shape}")
    return PERTURBATIONS[kind](array.astype(np.uint8), severity, item_rng(item_key, kind, severity, seed))
