"""Image perturbations at severities 1–5 (pure functions of (image, severity, draws)).

The 19 corruption types reproduce the reference implementation detection robustness papers use: Michaelis et al.'s
`imagecorruptions` 1.1.2 (COCO-C; the any-size form of Hendrycks & Dietterich's ImageNet-C code). Same parameter
tables, same operations in the same float types, the same OpenCV calls (opencv-python-headless), the same frost
photographs (read from imagecorruptions installed without its dependencies), and the same random draws: the
reference draws from numpy's legacy global stream, so each function takes a legacy `np.random.RandomState` and
draws from it in the reference's order. Given `np.random.RandomState(seed)`, a function returns the reference's
image after `np.random.seed(seed)`, bit for bit (tests/test_corruption_fidelity.py checks all 19 types × 5
severities against goldens the reference itself wrote, tools/corruption_goldens.py). In a grid, each (item, type,
severity, seed) gets its own stream (`item_rng`), so images differ pixel for pixel from one imagecorruptions run
(which shares one global stream) but are equal in distribution.

The PAD ones (white balance, lighting gradient, card rotation/shift) model what differs between phone photos of a
card. Input and output: uint8 (H, W, 3).

Cached perturbed predictions are keyed by the code fingerprint of this module (see core/fingerprint.py): editing a
perturbation changes the key, with nothing to bump.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.ndimage import gaussian_filter

# The libraries the corruptions compute with: a cell's key carries their versions (core.fingerprint.runtime_part).
PERTURBATION_RUNTIME = ("numpy", "scipy", "opencv-python-headless", "pillow")

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

Draws = np.random.RandomState
Perturbation = Callable[[np.ndarray, int, Draws], np.ndarray]

# The reference's frost photographs (imagecorruptions 1.1.2, Apache-2.0), read from that package installed without
# its dependencies; the digests make sure a different copy cannot silently change the results.
FROST_PHOTOS = (
    ("frost1.png", "ff9f907860bd7a835d459e32f9d588062b7f61ee267343cc7222b56753a14755"),
    ("frost2.png", "fe211a89b336999c207a852ce05818d4545d0b57c5beadd824b4cc9d9a9b6137"),
    ("frost3.png", "2d0d50b4a9bb213f38b024ef7768731bb83cc08d2f26b5766bbc167cdfa0e504"),
    ("frost4.jpg", "3f8b91ca1a9fa7167b09e773da53f5ae60d0a1fd88f02a783f6e328a72887f6e"),
    ("frost5.jpg", "5fc6a19df4a429ba68abdcc8f8a4278d4c9f81c9ccafd2c92ab0c8cf8992ebd2"),
)  # the reference draws randint(5): its sixth photograph is never used
FROST_PACKAGE = "imagecorruptions==1.1.2"


class PerturbationError(ValueError):
    """An unknown perturbation type or severity."""


def _unit(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    # the reference returns np.clip(x, 0, 1) * 255 and imagecorruptions.corrupt applies np.uint8: truncation
    return np.uint8(np.clip(unit, 0.0, 1.0) * 255)


def _gaussian(x: np.ndarray, sigma, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image 0.19's `gaussian` on float input: scipy's gaussian_filter in the input's float type, sigma 0
    across a trailing colour axis."""
    if x.ndim == 3 and np.ndim(sigma) == 0:
        sigma = (sigma, sigma, 0)
    return gaussian_filter(x, sigma, mode=mode, truncate=truncate)


def gaussian_noise(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    x = _unit(image)
    return _to_uint8(x + rng.normal(size=x.shape, scale=GAUSSIAN_NOISE[severity - 1]))


def shot_noise(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    c = SHOT_NOISE[severity - 1]
    return _to_uint8(rng.poisson(_unit(image) * c) / float(c))


def impulse_noise(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    """scikit-image 0.19's `random_noise(mode="s&p")`: each value flipped with probability c, to 1 or 0 alike.

    skimage draws from `np.random.default_rng(seed)` with no seed, i.e. from OS entropy, so the reference's impulse
    noise is not reproducible at all; here that Generator is seeded from the item's stream (tools/corruption_goldens.py
    seeds the reference's the same way)."""
    x = _unit(image)
    generator = np.random.default_rng(rng.randint(2**31))
    flipped = generator.random(x.shape) <= IMPULSE_NOISE[severity - 1]
    salted = generator.random(x.shape) <= 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return _to_uint8(x)


def speckle_noise(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    x = _unit(image)
    return _to_uint8(x + x * rng.normal(size=x.shape, scale=SPECKLE_NOISE[severity - 1]))


def gaussian_blur(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    return _to_uint8(_gaussian(_unit(image), GAUSSIAN_BLUR[severity - 1]))


def _glass_sources(height: int, width: int, delta: int, offsets: np.ndarray) -> np.ndarray:
    """Flat index of the pixel each position holds after one pass of the reference's shuffle loop.

    The reference visits (h, w) from bottom-right to top-left and runs `x[h, w], x[h', w'] = x[h', w'], x[h, w]`.
    Its right-hand side holds numpy views, not copies: the first assignment copies the neighbour into (h, w), and
    the second writes (h, w) — by now the neighbour's own value — back into the neighbour. So no pixel is swapped:
    (h, w) takes the value its neighbour holds at that moment, which is the neighbour's new value if the loop
    visited it earlier, else its value before the pass. Following those "visited earlier" links to their end gives
    every position's source at once; pointer doubling follows all chains together, in log(chain length) steps."""
    rows = np.repeat(np.arange(height - delta, delta, -1), width - 2 * delta)
    cols = np.tile(np.arange(width - delta, delta, -1), height - 2 * delta)
    here = rows * width + cols
    target = np.arange(height * width)
    target[here] = (rows + offsets[:, 1]) * width + cols + offsets[:, 0]  # offsets are (dx, dy), in visiting order
    order = np.full(height * width, len(here))  # never visited: read as it was before the pass
    order[here] = np.arange(len(here))
    jump = np.arange(height * width)
    earlier = order[target[here]] < order[here]
    jump[here[earlier]] = target[here[earlier]]
    while True:
        jumped = jump[jump]
        if np.array_equal(jumped, jump):
            return target[jump]
        jump = jumped


def glass_blur(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    """Blur, move every pixel's value from a random neighbour (see _glass_sources), blur again."""
    sigma, delta, iterations = GLASS_BLUR[severity - 1]
    x = np.uint8(_gaussian(_unit(image), sigma) * 255)
    height, width = x.shape[:2]
    visited = max(height - 2 * delta, 0) * max(width - 2 * delta, 0)
    for _ in range(iterations):
        # One randint(-delta, delta, size=(visited, 2)) draws what the reference's per-pixel size=(2,) calls draw.
        offsets = rng.randint(-delta, delta, size=(visited, 2))
        x = x.reshape(-1, x.shape[2])[_glass_sources(height, width, delta, offsets)].reshape(x.shape)
    return _to_uint8(_gaussian(x / 255.0, sigma))


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's `disk`: an aliased disk (17×17 up to radius 8), normalised, cv2.GaussianBlur'd."""
    if radius <= 8:
        span, ksize = np.arange(-8, 8 + 1), (3, 3)
    else:
        span, ksize = np.arange(-radius, radius + 1), (5, 5)
    xs, ys = np.meshgrid(span, span)
    aliased = np.array((xs**2 + ys**2) <= radius**2, dtype=np.float32)
    aliased /= np.sum(aliased)
    return cv2.GaussianBlur(aliased, ksize=ksize, sigmaX=alias_blur)


def defocus_blur(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    radius, alias = DEFOCUS_BLUR[severity - 1]
    x = _unit(image)
    kernel = disk_kernel(radius, alias)
    channels = [cv2.filter2D(np.ascontiguousarray(x[:, :, d]), -1, kernel) for d in range(x.shape[2])]
    return _to_uint8(np.stack(channels, axis=-1))


def motion_kernel(radius: int, sigma: float) -> np.ndarray:
    """The reference's one-sided Gaussian weights along the blur line (its getMotionBlurKernel)."""
    steps = np.arange(2 * radius + 1)
    weights = np.exp(-(steps**2) / (2 * (sigma**2))) / (np.sqrt(2 * np.pi) * sigma)
    return weights / np.sum(weights)


def motion_shifts(radius: int, angle_degrees: float, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(dy, dx) of each kernel step, as the reference rounds them, up to the first step leaving the image."""
    width = 2 * radius + 1
    point = (width * np.sin(np.deg2rad(angle_degrees)), width * np.cos(np.deg2rad(angle_degrees)))
    hypot = math.hypot(point[0], point[1])
    shifts = []
    for i in range(width):
        dy, dx = -math.ceil(((i * point[0]) / hypot) - 0.5), -math.ceil(((i * point[1]) / hypot) - 0.5)
        if abs(dy) >= shape[0] or abs(dx) >= shape[1]:
            break  # the reference stops there: later steps add nothing
        shifts.append((dy, dx))
    return shifts


def _motion_blur(x: np.ndarray, radius: int, sigma: float, angle_degrees: float) -> np.ndarray:
    """The reference's `_motion_blur`: the kernel-weighted sum of copies of x shifted with repeated edges, summed in
    float64 in the same order. Slices of one edge-padded copy replace its np.roll-and-patch shifts (same pixels)."""
    kernel = motion_kernel(radius, sigma)
    shifts = motion_shifts(radius, angle_degrees, x.shape)
    pad = max(max(abs(dy), abs(dx)) for dy, dx in shifts)
    padded = np.pad(x, [(pad, pad), (pad, pad)] + [(0, 0)] * (x.ndim - 2), mode="edge")
    height, width = x.shape[:2]
    blurred = np.zeros(x.shape, dtype=np.float64)
    for weight, (dy, dx) in zip(kernel, shifts):
        blurred += weight * padded[pad - dy : pad - dy + height, pad - dx : pad - dx + width]
    return blurred


def motion_blur(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    radius, sigma = MOTION_BLUR[severity - 1]
    blurred = _motion_blur(np.asarray(image, dtype=np.uint8), radius, sigma, rng.uniform(-45, 45))
    return np.uint8(np.clip(blurred, 0, 255))


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """scikit-image 0.19's rgb2hsv, value for value: the same operations per pixel, and where several channels are
    the maximum, blue's hue formula wins over green's over red's (skimage assigns them in that order). Computed on
    whole planes and selected, instead of skimage's masked assignments: faster, same bits. The planes are made
    contiguous first and max/min taken pairwise: a reduction over the last axis of 3 is ~6x slower, and max and
    max - min are exact, so the bits are skimage's `max(-1)` and `ptp(-1)`."""
    r, g, b = (np.ascontiguousarray(rgb[..., k]) for k in range(3))
    value = np.maximum(np.maximum(r, g), b)
    delta = value - np.minimum(np.minimum(r, g), b)
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = delta / value
        hue = np.where(b == value, 4.0 + (r - g) / delta, np.where(g == value, 2.0 + (b - r) / delta, (g - b) / delta))
        hue = (hue / 6.0) % 1.0
    flat = delta == 0.0
    saturation[flat] = 0.0
    hue[flat] = 0.0
    out = np.stack([hue, saturation, value], axis=-1)
    out[np.isnan(out)] = 0
    return out


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """scikit-image 0.19's hsv2rgb, value for value (its np.choose over six stacked (v, t, p)… triples, one channel
    at a time)."""
    h, s, v = (np.ascontiguousarray(hsv[..., k]) for k in range(3))
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = hi.astype(np.uint8) % 6
    channels = ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))  # sectors 0–5 → (R, G, B)
    return np.stack([np.choose(sector, choices) for choices in channels], axis=-1)


def brightness(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    hsv = rgb_to_hsv(_unit(image))
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + BRIGHTNESS[severity - 1], 0, 1)
    return _to_uint8(hsv_to_rgb(hsv))


def saturate(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    scale, shift = SATURATE[severity - 1]
    hsv = rgb_to_hsv(_unit(image))
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * scale + shift, 0, 1)
    return _to_uint8(hsv_to_rgb(hsv))


def contrast(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    x = _unit(image)
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return _to_uint8((x - means) * CONTRAST[severity - 1] + means)


def jpeg(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, "JPEG", quality=JPEG_QUALITY[severity - 1])
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.uint8)


def pixelate(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    """Box-filtered down by c, then nearest-neighbour back up, as the reference does."""
    height, width = image.shape[:2]
    c = PIXELATE[severity - 1]
    small = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize(
        (max(1, int(width * c)), max(1, int(height * c))), Image.Resampling.BOX
    )
    return np.asarray(small.resize((width, height), Image.Resampling.NEAREST), dtype=np.uint8)


def plasma_fractal(mapsize: int, wibbledecay: float, rng: Draws) -> np.ndarray:
    """The reference's diamond-square height map in [0, 1] (its own variant of FLHerne's mapgen, whose diamond step
    averages two grids: not ImageNet-C's), drawing its uniforms in the same order."""
    if mapsize & (mapsize - 1):
        raise PerturbationError(f"plasma map size {mapsize} is not a power of two")
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize, wibble = mapsize, 100

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        square = corners + np.roll(corners, shift=-1, axis=0)
        square += np.roll(square, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(square)
        centres = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        left = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1))
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(left)
        top = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0))
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(top)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def fog(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    strength, decay = FOG[severity - 1]
    x = _unit(image)
    height, width = x.shape[:2]
    mapsize = 1 << (max(x.shape) - 1).bit_length()  # the reference's next_power_of_2 of the largest side
    max_val = x.max()
    x += strength * plasma_fractal(mapsize, decay, rng)[:height, :width][..., np.newaxis]
    return _to_uint8(x * max_val / (max_val + strength))


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """The reference's clipped_zoom: the centre crop of size/factor zoomed back (linear interpolation); its size
    rounds to at least x's, and callers crop it from the top left."""
    crop_h, crop_w = int(np.ceil(x.shape[0] / float(factor))), int(np.ceil(x.shape[1] / float(factor)))
    top, left = (x.shape[0] - crop_h) // 2, (x.shape[1] - crop_w) // 2
    crop = x[top : top + crop_h, left : left + crop_w]
    # Channel by channel: the same values as the reference's one (factor, factor, 1) zoom, several times faster.
    return np.stack([ndimage.zoom(crop[..., c], factor, order=1) for c in range(x.shape[2])], axis=-1)


def zoom_blur(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    stop, step = ZOOM_BLUR[severity - 1]
    x = _unit(image).astype(np.float32)
    height, width = x.shape[:2]
    factors = np.arange(1, stop, step)
    out = np.zeros_like(x)
    for factor in factors:
        out += clipped_zoom(x, factor)[:height, :width]
    return _to_uint8((x + out) / (len(factors) + 1))


def snow(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    """Zoomed, thresholded noise streaked by a motion blur, added twice (once upside down) over a whitened image."""
    mean, std, zoom, threshold, radius, sigma, weight = SNOW[severity - 1]
    x = np.asarray(image, dtype=np.float32) / 255.0
    height, width = x.shape[:2]
    flakes = rng.normal(size=x.shape[:2], loc=mean, scale=std)
    flakes = clipped_zoom(flakes[..., np.newaxis], zoom)
    flakes[flakes < threshold] = 0
    flakes = np.clip(flakes[..., 0], 0, 1)
    # Blurred at the zoomed size (a few pixels larger than the image) and cropped after, as the reference does.
    flakes = _motion_blur(flakes, radius, sigma, rng.uniform(-135, -45))
    flakes = (np.round(flakes * 255).astype(np.uint8) / 255.0)[:height, :width, np.newaxis]
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(height, width, 1)
    x = weight * x + (1 - weight) * np.maximum(x, grey * 1.5 + 0.5)
    return _to_uint8(x + flakes + np.rot90(flakes, k=2))


def frost_photo_dir() -> Path:
    """Where the installed imagecorruptions package keeps its frost photographs, found without importing it (its
    import needs scikit-image and opencv-python, which the project does not install)."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise PerturbationError(f"frost needs the reference's frost photographs: pip install --no-deps {FROST_PACKAGE}")
    return Path(list(spec.submodule_search_locations)[0]) / "frost"


@lru_cache(maxsize=len(FROST_PHOTOS))
def frost_photo(index: int) -> np.ndarray:
    """Frost photograph `index` as cv2.imread gives it (BGR, uint8), checked against its digest."""
    name, digest = FROST_PHOTOS[index]
    path = frost_photo_dir() / name
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        raise PerturbationError(f"frost photograph {path} is missing or not imagecorruptions 1.1.2's: "
                                f"pip install --no-deps --force-reinstall {FROST_PACKAGE}")
    return cv2.imread(str(path))


@lru_cache(maxsize=32)
def _frost_rescaled(index: int, size: tuple[int, int]) -> np.ndarray:
    # Cached: a grid corrupts many same-sized images, and resizing a photograph costs more than the blend.
    return cv2.resize(frost_photo(index), dsize=size, interpolation=cv2.INTER_CUBIC)


def frost(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    """A random crop of one of the reference's frost photographs, scaled to cover the image ×1.1, blended in."""
    image_weight, frost_weight = FROST[severity - 1]
    index = rng.randint(5)
    photo_h, photo_w = frost_photo(index).shape[:2]
    height, width = image.shape[:2]
    scale = 1.0
    if photo_h < height and photo_w >= width:
        scale = height / photo_h
    elif photo_h >= height and photo_w < width:
        scale = width / photo_w
    elif photo_h < height and photo_w < width:
        scale = np.maximum(height / photo_h, width / photo_w)
    scale *= 1.1
    rescaled = _frost_rescaled(index, (int(np.ceil(photo_w * scale)), int(np.ceil(photo_h * scale))))
    top, left = rng.randint(0, rescaled.shape[0] - height), rng.randint(0, rescaled.shape[1] - width)
    ice = rescaled[top : top + height, left : left + width][..., [2, 1, 0]]
    return np.uint8(np.clip(image_weight * np.asarray(image, dtype=np.float64) + frost_weight * ice, 0, 255))


def elastic_transform(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    """Smooth random displacement fields (sigma 1 % of the size), bilinear resampling with reflected edges."""
    x = np.asarray(image, dtype=np.float32) / 255.0
    height, width = x.shape[:2]
    sigma = np.array([height, width]) * 0.01
    alpha, max_shift = ELASTIC[severity - 1], height * 0.005
    dx, dy = (
        (_gaussian(rng.uniform(-max_shift, max_shift, size=(height, width)), sigma, mode="reflect", truncate=3)
         * alpha).astype(np.float32)
        for _ in range(2)
    )
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coords = np.stack([(rows + dy).reshape(-1), (cols + dx).reshape(-1)])
    out = np.stack([ndimage.map_coordinates(x[..., c], coords, order=1, mode="reflect").reshape(height, width)
                    for c in range(x.shape[2])], axis=-1)
    return _to_uint8(out)


def spatter(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    """Water drops (severities 1–3: thresholded blurred noise, edge-shaded with OpenCV, pale turquoise) or mud (4–5),
    with the reference's OpenCV calls and float types."""
    mean, std, sigma, threshold, intensity, mud = SPATTER[severity - 1]
    x = np.asarray(image, dtype=np.float32) / 255.0
    liquid = _gaussian(rng.normal(size=x.shape[:2], loc=mean, scale=std), sigma)
    liquid[liquid < threshold] = 0
    if not mud:
        layer = (liquid * 255).astype(np.uint8)
        distance = cv2.distanceTransform(255 - cv2.Canny(layer, 50, 150), cv2.DIST_L2, 5)
        _, distance = cv2.threshold(distance, 20, 20, cv2.THRESH_TRUNC)
        distance = cv2.equalizeHist(cv2.blur(distance, (3, 3)).astype(np.uint8))
        shading = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        distance = cv2.blur(cv2.filter2D(distance, cv2.CV_8U, shading), (3, 3)).astype(np.float32)
        drops = layer * distance
        peak = float(np.max(drops))
        # The reference divides by the peak unguarded (NaN, then garbage, when no drop has an edge).
        drops = drops / peak * np.float32(intensity) if peak > 0 else drops
        water = np.array([175, 238, 238], dtype=np.float32) / np.float32(255.0)
        return _to_uint8(x + drops[..., np.newaxis] * water)
    mask = _gaussian(np.where(liquid > threshold, 1, 0).astype(np.float32), intensity)
    mask[mask < 0.8] = 0
    brown = np.array([63, 42, 20], dtype=np.float64) / 255.0 * mask[..., np.newaxis]
    return _to_uint8(x * (1 - mask[..., np.newaxis]) + brown)


def white_balance(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    """Red and blue gains moved apart by ±c (a warmer or cooler light), green kept."""
    shift = WHITE_BALANCE[severity - 1] * rng.choice([-1.0, 1.0])
    gains = np.array([1.0 + shift, 1.0, 1.0 - shift])
    return _to_uint8(_unit(image) * gains)


def lighting_gradient(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
    """Brightness × (1 + a·t), t from −1 to 1 across the image in a random direction."""
    height, width = image.shape[:2]
    theta = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width]
    along = (x - (width - 1) / 2) * np.cos(theta) + (y - (height - 1) / 2) * np.sin(theta)
    t = along / max(np.abs(along).max(), 1e-9)
    return _to_uint8(_unit(image) * (1.0 + LIGHTING_GRADIENT[severity - 1] * t)[..., None])


def rotate_shift(image: np.ndarray, severity: int, rng: Draws) -> np.ndarray:
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


def item_rng(item_key: str, kind: str, severity: int, seed: int) -> Draws:
    """The same (item, type, severity, seed) always draws the same numbers, whatever else runs."""
    digest = hashlib.sha256(f"{item_key}\0{kind}\0{severity}\0{seed}".encode()).digest()
    # The legacy stream the reference draws from (Mersenne Twister), seeded from 128 bits of the digest.
    return np.random.RandomState(np.random.MT19937(int.from_bytes(digest[:16], "little")))


def perturb(image: np.ndarray, kind: str, severity: int, item_key: str, seed: int) -> np.ndarray:
    check(kind, severity)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise PerturbationError(f"item {item_key}: expected an (H, W, 3) image, got shape {array.shape}")
    return PERTURBATIONS[kind](array.astype(np.uint8), severity, item_rng(item_key, kind, severity, seed))
