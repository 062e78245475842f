"""Camera model: per-phone and per-photo colour, exposure, lighting, blur, noise, shift."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.special import ndtri

from evalstack.demo.cards.cards import CardSpec
from evalstack.demo.cards.geometry import CARD_HEIGHT, CARD_WIDTH, PAD
from evalstack.demo.cards.seeding import keyed_rng

_SIGMA_STEP = 0.25  # blur radii are quantised so pre-blurred templates can be cached
_NORMAL_QUANTILES = ndtri((np.arange(256) + 0.5) / 256.0)  # for cheap table-driven noise


@dataclass(frozen=True)
class Camera:
    """Per-photo camera parameters."""

    mix: np.ndarray  # (3, 3) colour mixing, rows sum to 1 so neutral greys stay neutral
    gains: tuple[float, float, float]  # white balance x exposure, per channel
    gamma: float
    gradient: tuple[float, float]  # illumination slope along x and y over the card
    sigma: float  # Gaussian blur radius in px (quantised)
    noise: float  # sensor noise std in 8-bit levels
    shift: tuple[int, int]  # (dx, dy) in px


def camera_for(spec: CardSpec, seed: int) -> Camera:
    """The camera of one photo: fixed per phone model, varied per photo."""
    model = keyed_rng("camera-model", spec.camera_type)  # fixed per phone model, any seed
    photo = keyed_rng("photo", seed, spec.id)

    wb = model.normal(1.0, 0.07, 3) * photo.normal(1.0, 0.04, 3)
    temperature = photo.normal(0.0, 0.05)  # warm/cool ambient light
    wb *= np.array([1.0 + temperature, 1.0, 1.0 - temperature])
    mix = np.eye(3) + model.normal(0.0, 0.06, (3, 3)) * (1 - np.eye(3))
    mix /= mix.sum(axis=1, keepdims=True)
    exposure = math.exp(model.normal(0.0, 0.06) + photo.normal(0.0, 0.08))

    angle = photo.uniform(0.0, 2 * math.pi)
    slope = photo.uniform(0.0, 0.22)
    gx, gy = slope * math.cos(angle), slope * math.sin(angle)
    # The illumination peaks at 1 in the brightest corner; dividing the gains by the
    # centre value keeps the card centre at the exposure level.
    centre = 1.0 - (abs(gx) + abs(gy)) / 2

    sigma = model.uniform(0.6, 1.8) * photo.uniform(0.8, 1.25)
    return Camera(
        mix=mix.astype(np.float32),
        gains=tuple(float(g) for g in wb * exposure / centre),
        gamma=float(model.uniform(0.88, 1.12) * photo.uniform(0.96, 1.04)),
        gradient=(gx, gy),
        sigma=round(sigma / _SIGMA_STEP) * _SIGMA_STEP,
        noise=float(model.uniform(1.2, 3.5) * photo.uniform(0.8, 1.2)),
        shift=(int(photo.integers(-PAD, PAD + 1)), int(photo.integers(-PAD, PAD + 1))),
    )


def _illumination(gx: float, gy: float) -> np.ndarray:
    """(H, 3W) uint16 lighting field in 8.8 fixed point, max 257 (rounding).

    Split as row term + column term, both non-negative, so it is one integer
    outer sum; 255 * 257 = 65535 still fits uint16 after multiplying a pixel.
    """
    ys = np.linspace(0.0, 1.0, CARD_HEIGHT)
    xs = np.linspace(0.0, 1.0, CARD_WIDTH)
    ty = gy * ys if gy >= 0 else -gy * (1.0 - ys)  # in [0, |gy|]
    tx = gx * xs if gx >= 0 else -gx * (1.0 - xs)
    rows = np.round(256.0 * (1.0 - abs(gx) - abs(gy) + ty)).astype(np.uint16)
    cols = np.round(256.0 * np.repeat(tx, 3)).astype(np.uint16)
    return np.add.outer(rows, cols)


def apply_camera(arr: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Exposure, white balance, tone curve, lighting gradient and sensor noise."""
    # Per-channel gains and the tone curve collapse into one lookup table, which
    # Pillow applies in C far faster than float numpy would.
    levels = np.arange(256) / 255.0
    lut = [np.round(255.0 * np.clip(levels * g, 0.0, 1.0) ** cam.gamma) for g in cam.gains]
    toned = np.asarray(Image.fromarray(arr).point(np.concatenate(lut).astype(int).tolist()))

    # Working at (H, 3W) avoids numpy's slow broadcasting over a trailing axis of 3.
    out = toned.reshape(CARD_HEIGHT, 3 * CARD_WIDTH).astype(np.uint16)
    out *= _illumination(*cam.gradient)
    out >>= 8

    # Sensor noise from a 256-entry quantile table indexed by random bytes: several
    # times faster than drawing Gaussians and indistinguishable at 8-bit precision.
    table = np.clip(np.round(_NORMAL_QUANTILES * cam.noise), -127, 127).astype(np.int8)
    noise = np.take(table, np.frombuffer(rng.bytes(out.size), dtype=np.uint8))
    signed = out.view(np.int16)  # values <= 255, so the bit pattern is the same
    np.add(signed, noise.reshape(signed.shape), out=signed, casting="unsafe")
    np.clip(signed, 0, 255, out=signed)
    return signed.astype(np.uint8).reshape(CARD_HEIGHT, CARD_WIDTH, 3)
