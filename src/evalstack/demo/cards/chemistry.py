"""Lane chemistry: how much dye each lane of one sample absorbs, per pixel."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from evalstack.demo.cards.barcodes import PALETTE, drug_barcode
from evalstack.demo.cards.cards import CardSpec
from evalstack.demo.cards.geometry import LANE_COUNT, REACTION_ZONE, REGION, lane_span
from evalstack.demo.cards.seeding import keyed_rng

_TAIL_END = 849  # wicking tails fade out before the model crop ends
_WET_RGB = (196, 192, 168)  # developed (wet then dried) paper is slightly yellow-grey


def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=float)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur_profiles(profiles: np.ndarray, sigma: float) -> np.ndarray:
    """Blur 1-D profiles along their last axis (same-size output)."""
    if sigma <= 0:
        return profiles
    k = _gauss_kernel(sigma)
    return np.stack([np.convolve(p, k, mode="same") for p in profiles])


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """0 for x <= 0 rising linearly to 1 at x >= width (soft paper-absorption edges)."""
    return np.clip(x / width, 0.0, 1.0)


def lane_absorbance(spec: CardSpec, seed: int, sigma: float) -> np.ndarray:
    """Absorbance (H_r, W_r, 3) of dye over ``REGION``: pixel = base * (1 - A).

    Each lane is separable (column profile x row profile), so the camera blur is
    applied to the 1-D profiles instead of the image: exact for a Gaussian up to the
    low-frequency blotch texture, and far cheaper than blurring the region.
    """
    y0, y1, x0, x1 = REGION
    rows = np.arange(y0, y1, dtype=float)
    cols = np.arange(x0, x1, dtype=float)
    code = drug_barcode(spec.sample_name)
    chem = keyed_rng("chemistry", seed, spec.sample_id)  # shared by all photos of the sample

    strength = (0.3 + 0.7 * spec.quantity / 100.0) * chem.lognormal(0.0, 0.12)
    lane_gain = chem.lognormal(0.0, 0.2, LANE_COUNT)
    opacity = np.clip(code.opacity * strength * lane_gain, 0.0, 0.97)
    colour = np.clip(code.colour + chem.normal(0.0, 10.0, (LANE_COUNT, 3)), 0.0, 255.0)
    band = np.clip(code.band + chem.normal(0.0, 0.03, (LANE_COUNT, 2)), 0.0, 1.0)
    # Occasional spurious faint reaction (impurities, uneven swipe).
    if chem.random() < 0.2:
        lane = chem.integers(LANE_COUNT)
        opacity[lane] = max(opacity[lane], chem.uniform(0.08, 0.22))
        colour[lane] = PALETTE[chem.integers(len(PALETTE))]

    # Column profiles: lane interior between the wax lines with soft 3-px edges.
    col_prof = np.zeros((LANE_COUNT, cols.size))
    for lane in range(LANE_COUNT):
        a, b = lane_span(lane)
        col_prof[lane] = _ramp(cols - (a + 2), 3.0) * _ramp((b - 1) - cols, 3.0)

    # Row profiles: a band inside the reaction zone, then a wicking tail that fades
    # from the band's lower edge down to _TAIL_END.
    zt, zb = REACTION_ZONE
    frac = (rows - zt) / (zb - zt)
    row_prof = np.zeros((LANE_COUNT, rows.size))
    fade_out = _ramp(_TAIL_END - rows, 25.0)
    for lane in range(LANE_COUNT):
        top, bottom = band[lane]
        inside = _ramp(frac - top, 0.05) * _ramp(bottom - frac, 0.05)
        fade_start = zt + (bottom - 0.05) * (zb - zt)  # where the band starts to fade
        tail = code.tail[lane] * np.exp(-(rows - fade_start) / 90.0) * (rows >= fade_start)
        row_prof[lane] = np.maximum(inside, tail) * fade_out

    absorb = 1.0 - colour / 255.0  # (12, 3) per unit opacity
    weights = opacity[:, None] * absorb  # (12, 3)

    # Wetted paper: a faint common tint over all lanes from the zone top to the tail end.
    wet_rows = _ramp(rows - zt + 4, 4.0) * _ramp(_TAIL_END - rows, 30.0)
    wet_weight = chem.uniform(0.04, 0.09) * (1.0 - np.array(_WET_RGB) / 255.0)

    row_all = _blur_profiles(np.vstack([row_prof, wet_rows]), sigma).astype(np.float32)
    col_all = _blur_profiles(np.vstack([col_prof, col_prof.sum(0)]), sigma)
    w_all = np.vstack([weights, wet_weight])  # (13, 3)
    # A(y, x, c) = sum_l row_l(y) * w_l,c * col_l(x), laid out as (H_r, W_r * 3).  Each
    # lane only touches its own columns, so per-lane outer products on those columns
    # beat a dense matmul -- and avoid BLAS threads, which oversubscribe a process pool.
    col_w = (col_all[:, :, None] * w_all[:, None, :]).reshape(len(w_all), -1).astype(np.float32)
    absorbance = np.multiply.outer(row_all[-1], col_w[-1])  # wet paper, all lanes
    for lane in range(LANE_COUNT):
        nz = np.flatnonzero(col_w[lane])
        if nz.size:
            lo, hi = nz[0], nz[-1] + 1
            absorbance[:, lo:hi] += np.multiply.outer(row_all[lane], col_w[lane, lo:hi])
    absorbance = absorbance.reshape(rows.size, cols.size, 3)

    # Low-frequency blotchiness of the reagent spots (per sample, not per photo).
    texture = chem.normal(0.0, 0.12, (9, 26)).astype(np.float32)
    tex = np.asarray(Image.fromarray(texture).resize((cols.size, rows.size), Image.Resampling.BILINEAR))
    absorbance *= 1.0 + tex[:, :, None]
    return np.clip(absorbance, 0.0, 1.0, out=absorbance)
