"""Image perturbations at severities 1–5 (pure functions of (image, severity, rng)).

The ImageNet-C ones follow Hendrycks & Dietterich's reference code
(github.com/hendrycks/robustness, `make_imagenet_c.py`): same parameter tables,
same formulas, with their global `np.random` replaced by a seeded Generator and
OpenCV/Wand/scikit-image calls replaced by scipy/Pillow equivalents. Sizes that
ImageNet-C ties to 224 px (pixelate, fog's map) scale with the image. The PAD
ones (white balance, lighting gradient, card rotation/shift) model what differs
between phone photos of a card. Input and output: uint8 (H, W, 3).

Cached perturbed predictions are keyed by the code fingerprint of this module (see
core/fingerprint.py): editing a perturbation changes the key, with nothing to bump.
"""
from __future__ import annotations

import hashlib
import io
from typing import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import convolve1d, gaussian_filter
from scipy.signal import fftconvolve

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
}


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
