"""Deterministic generator of FHI2020-style PAD (paper analytical device) card photos.

The real FHI2020 PAD dataset consists of rectified phone photos of paper cards
(730 x 1220 px RGB PNG) with 12 reagent lanes A-L, each 53 px wide, starting at
x = 70.  A drug sample is swiped across the lanes, the card is developed in water,
and every lane's reagent changes colour (or not) in the reaction zone
y = 359..632, leaving faint wicking tails below it.  Models later crop
(71, 359, 707, 849) and resize to 454 x 454, so that band is what matters.

This module fabricates a look-alike dataset with the real registry layout
(``metadata_dev.csv`` / ``metadata_test.csv``) so the evaluation pipeline can be
exercised without downloading the real images:

* every drug has a fixed 12-lane colour "barcode" derived from its name
  (hashlib, so it is identical across processes and Python versions); a few
  chemically related pairs differ in only one or two faint lanes, which keeps a
  classifier good but not perfect;
* lane intensity follows the quantity (``0.3 + 0.7 * quantity / 100``);
* per-sample chemistry noise is shared by all photos of one ``sample_id``;
* per-photo camera effects depend on the phone model plus per-photo randomness
  (white balance, colour mixing, exposure, tone curve, lighting gradient,
  Gaussian blur, sensor noise, shifts of up to +-4 px).

All randomness is drawn from numpy Generators seeded with hashlib digests of
explicit keys, so every card is reproducible on its own, independent of call
order and of how work is split over processes.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import multiprocessing
import os
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from scipy.special import ndtri
from tqdm import tqdm

__all__ = [
    "CAMERA_TYPES",
    "CARD_HEIGHT",
    "CARD_WIDTH",
    "CONFUSABLE_PAIRS",
    "DRUGS",
    "FIRST_ID",
    "FIRST_SAMPLE_ID",
    "LANE_COUNT",
    "LANE_LETTERS",
    "LANE_WIDTH",
    "LANE_X0",
    "MODEL_CROP",
    "PAPER_RGB",
    "QUANTITIES",
    "REACTION_ZONE",
    "REGISTRY_COLUMNS",
    "Barcode",
    "CardSpec",
    "drug_barcode",
    "encode_png",
    "lane_span",
    "plan_cards",
    "render_card",
    "write_dataset",
]

# --------------------------------------------------------------------------------------
# Public constants
# --------------------------------------------------------------------------------------

DRUGS: tuple[str, ...] = (
    "albendazole",
    "amoxicillin",
    "ampicillin",
    "azithromycin",
    "benzylpenicillin",
    "ceftriaxone",
    "chloroquine",
    "ciprofloxacin",
    "doxycycline",
    "epinephrine",
    "ethambutol",
    "ferrous sulfate",
    "hydroxychloroquine",
    "isoniazid",
    "promethazine hydrochloride",
    "pyrazinamide",
    "rifampicin",
    "sulfamethoxazole",
    "tetracycline",
    "acetaminophen",
    "lactose",
)
QUANTITIES: tuple[int, ...] = (0, 20, 50, 80, 100)
CAMERA_TYPES: tuple[str, ...] = (
    "Google Pixel 3a",
    "samsung SM-A505F",
    "Galaxy S9",
    "iPhone 11",
    "Moto G7",
    "Huawei P20",
    "Xiaomi Redmi Note 8",
    "LG K40",
    "Nokia 6.1",
    "OnePlus 6T",
    "samsung SM-J320F",
    "Sony Xperia XA2",
)
CARD_WIDTH, CARD_HEIGHT = 730, 1220
REGISTRY_COLUMNS: tuple[str, ...] = (
    "id",
    "sample_id",
    "sample_name",
    "quantity",
    "camera_type_1",
    "url",
    "hashlib_md5",
    "image_name",
)

LANE_COUNT = 12
LANE_LETTERS = "ABCDEFGHIJKL"
LANE_X0 = 70
LANE_WIDTH = 53
REACTION_ZONE: tuple[int, int] = (359, 632)  # y range [top, bottom)
MODEL_CROP: tuple[int, int, int, int] = (71, 359, 707, 849)  # PIL box used by the NN preprocessing
PAPER_RGB: tuple[int, int, int] = (238, 236, 229)

# (derived drug, base drug, number of lanes that differ).  Chemically related drugs
# react alike on real PADs; a weak extra/missing lane keeps them hard to separate.
CONFUSABLE_PAIRS: tuple[tuple[str, str, int], ...] = (
    ("hydroxychloroquine", "chloroquine", 1),
    ("amoxicillin", "ampicillin", 1),
    ("tetracycline", "doxycycline", 2),
)

FIRST_ID = 15000
FIRST_SAMPLE_ID = 50000

# --------------------------------------------------------------------------------------
# Private layout / style constants
# --------------------------------------------------------------------------------------

_PAD = 4  # max shift in px; the template is drawn with this margin so shifts are crops
_WAX_RGB = (52, 58, 92)  # printed wax barriers between lanes
_INK_RGB = (28, 28, 32)
_LANE_TOP = 330  # wax barriers span this y range
_LANE_BOTTOM = 880
_TAIL_END = 849  # wicking tails fade out before the model crop ends
_REGION = (_LANE_TOP, _LANE_BOTTOM, LANE_X0 - 6, LANE_X0 + LANE_COUNT * LANE_WIDTH + 6)  # y0,y1,x0,x1

# Fully developed reaction colours (dye on white paper); barcodes pick from these.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (112, 42, 140),  # purple
    (44, 72, 172),  # blue
    (222, 92, 160),  # pink
    (236, 142, 42),  # orange
    (232, 208, 58),  # yellow
    (140, 92, 42),  # brown
    (62, 150, 82),  # green
    (204, 42, 42),  # red
    (92, 92, 104),  # dark grey
    (42, 152, 162),  # teal
    (34, 34, 84),  # navy
    (172, 132, 204),  # lilac
)
_WET_RGB = (196, 192, 168)  # developed (wet then dried) paper is slightly yellow-grey

_SIGMA_STEP = 0.25  # blur radii are quantised so pre-blurred templates can be cached
_NORMAL_QUANTILES = ndtri((np.arange(256) + 0.5) / 256.0)  # for cheap table-driven noise


# --------------------------------------------------------------------------------------
# Deterministic randomness
# --------------------------------------------------------------------------------------


def _digest(*key: object) -> bytes:
    # repr() of ints/strs is stable across runs, unlike hash() which is salted.
    return hashlib.sha256("\x1f".join(repr(k) for k in key).encode()).digest()


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(_digest(*key)[:16], "little"))


def _unit(*key: object) -> float:
    """A uniform number in [0, 1) fixed by ``key``."""
    return int.from_bytes(_digest(*key)[:8], "little") / 2.0**64


# --------------------------------------------------------------------------------------
# Card identities and the dev/test split
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardSpec:
    """One photo of one physical card (a registry row without url/md5)."""

    id: int
    sample_id: int
    sample_name: str
    quantity: int
    camera_type: str
    split: str  # "dev" or "test"

    @property
    def image_name(self) -> str:
        # Spaces would be awkward in URLs and shell pipelines; the registry keeps
        # them in sample_name only.
        name = self.sample_name.replace(" ", "-")
        return f"{self.id}__{self.sample_id}__{name}__{self.quantity}.png"

    @property
    def identity(self) -> tuple[int, int, str, int, str]:
        return (self.id, self.sample_id, self.sample_name, self.quantity, self.camera_type)


@dataclass(frozen=True)
class _Sample:
    index: int  # 0-based position in the sample sequence
    sample_name: str
    quantity: int
    drug_rank: int  # how many earlier samples have the same drug


def _iter_samples(seed: int) -> Iterator[_Sample]:
    """Endless, seed-determined sequence of (drug, quantity) samples.

    Samples come in cycles of 105 = 5 rounds x 21 drugs.  Each round lists every drug
    once in a fresh random order, and a per-cycle Latin square gives each drug each
    quantity exactly once per cycle, so every prefix is balanced over drugs (to
    within one sample) and over drug x quantity strata (to within one cycle).
    """
    n_drugs, n_q = len(DRUGS), len(QUANTITIES)
    index = 0
    cycle = 0
    while True:
        rng = _rng("cycle", seed, cycle)
        q_offset = rng.integers(0, n_q, size=n_drugs)
        q_order = rng.permutation(n_q)
        for rnd in range(n_q):
            for d in rng.permutation(n_drugs):
                q = QUANTITIES[q_order[(rnd + q_offset[d]) % n_q]]
                yield _Sample(index, DRUGS[d], q, cycle * n_q + rnd)
                index += 1
        cycle += 1


def _split_phase(seed: int, sample_name: str) -> float:
    """Per-drug phase in [0, 1) for ``_is_test``; the 21 phases are evenly spaced
    (random order, random offset), so each round of 21 samples (indices 21r..21r+20,
    one per drug) holds floor or ceil of 21 * test_fraction test samples."""
    order = _rng("split-order", seed).permutation(len(DRUGS))
    rank = int(np.flatnonzero(order == DRUGS.index(sample_name))[0])
    return (rank + _unit("split-offset", seed)) / len(DRUGS)


def _is_test(seed: int, sample_name: str, drug_rank: int, test_fraction: float) -> bool:
    """Systematic sampling along each drug's sample sequence.

    The j-th sample of a drug is "test" when floor(f*(j+1) + u) > floor(f*j + u) for the
    drug's phase u.  Hence any prefix holds floor(f*m + u) test samples out of a drug's
    m samples (within one of f*m), and the decision never changes when more samples
    are appended.  For f <= 0.5 two consecutive samples of a drug are never both
    test, so every drug with at least two samples has dev samples.
    """
    u = _split_phase(seed, sample_name)
    return math.floor(test_fraction * (drug_rank + 1) + u) > math.floor(test_fraction * drug_rank + u)


def plan_cards(n_cards: int, seed: int, test_fraction: float = 0.2) -> list[CardSpec]:
    """Plan the identities and dev/test split of ``n_cards`` photos.

    Ids run from 15000 and sample ids from 50000 upwards.  Samples cycle through the
    105 sample_name x quantity strata (see ``_iter_samples``); each sample is
    photographed 1-4 times by distinct, randomly chosen phones.

    Design choice -- stable prefixes over exact stratification: every decision
    (stratum, photo count, cameras, split) depends only on the seed and the sample's
    position, so ``plan_cards(n + k, seed)[:n] == plan_cards(n, seed)`` exactly,
    including ``split`` (only the last sample of the shorter plan may have fewer
    photos, which does not change the rows it has).  The split is decided per
    sample, so all photos of a ``sample_id`` land on the same side.  It is
    stratified by drug exactly (systematic sampling, see ``_is_test``: per drug,
    the number of test samples is within one of ``test_fraction`` x samples, and
    every round of 21 samples holds floor/ceil of 21 x ``test_fraction`` test
    samples, so even small plans have both splits); quantity stratification is
    approximate because the test quantity within each cycle is random.  The realised
    test share of *photos* is close to, not exactly, ``test_fraction``.  With
    ``test_fraction <= 0.5`` every drug with at least two samples (any plan of
    >= 42 samples, i.e. roughly >= 105 cards) has dev samples.
    """
    if n_cards < 0:
        raise ValueError(f"n_cards must be >= 0, got {n_cards}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    cards: list[CardSpec] = []
    samples = _iter_samples(seed)
    while len(cards) < n_cards:
        sample = next(samples)
        rng = _rng("photos", seed, sample.index)
        n_photos = int(rng.integers(1, 5))
        cameras = rng.choice(len(CAMERA_TYPES), size=n_photos, replace=False)
        split = "test" if _is_test(seed, sample.sample_name, sample.drug_rank, test_fraction) else "dev"
        for cam in cameras[: n_cards - len(cards)]:
            cards.append(
                CardSpec(
                    id=FIRST_ID + len(cards),
                    sample_id=FIRST_SAMPLE_ID + sample.index,
                    sample_name=sample.sample_name,
                    quantity=sample.quantity,
                    camera_type=CAMERA_TYPES[int(cam)],
                    split=split,
                )
            )
    return cards


# --------------------------------------------------------------------------------------
# Drug barcodes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Barcode:
    """Per-lane reaction of one drug at full strength (arrays have length 12)."""

    colour: np.ndarray  # (12, 3) float, developed dye colour on white paper
    opacity: np.ndarray  # (12,) float in [0, 1]; 0 = lane stays blank
    band: np.ndarray  # (12, 2) float, top/bottom of the coloured band as zone fractions
    tail: np.ndarray  # (12,) float, strength of the wicking tail below the zone

    @property
    def active(self) -> np.ndarray:
        return self.opacity > 0


def _random_lane(
    rng: np.random.Generator, p_active: float, opacity: tuple[float, float]
) -> tuple[np.ndarray, float, tuple[float, float], float]:
    """(colour, opacity, band, tail) of one lane; opacity 0 when inactive."""
    active = rng.random() < p_active
    colour = np.clip(np.array(_PALETTE[rng.integers(len(_PALETTE))], float) + rng.normal(0, 10, 3), 0, 255)
    top = rng.uniform(0.0, 0.3)
    return (
        colour,
        rng.uniform(*opacity) if active else 0.0,
        (top, rng.uniform(max(top + 0.35, 0.6), 1.0)),
        rng.uniform(0.1, 0.45),
    )


@lru_cache(maxsize=None)
def drug_barcode(sample_name: str) -> Barcode:
    """The fixed 12-lane reaction pattern of a drug (a pure function of its name)."""
    if sample_name not in DRUGS:
        raise ValueError(f"unknown sample_name {sample_name!r}")
    derived = {d: (base, k) for d, base, k in CONFUSABLE_PAIRS}
    rng = _rng("barcode", sample_name)
    if sample_name in derived:
        base_name, n_diff = derived[sample_name]
        base = drug_barcode(base_name)
        colour, opacity, band, tail = (base.colour.copy(), base.opacity.copy(), base.band.copy(), base.tail.copy())
        # A differing lane is a faint extra reaction on a lane the base leaves blank
        # (or, failing that, a fainter version of an existing one).
        blank = np.flatnonzero(opacity == 0)
        pool = blank if len(blank) >= n_diff else np.arange(LANE_COUNT)
        for lane in rng.choice(pool, size=n_diff, replace=False):
            c, _, b, t = _random_lane(rng, 1.0, (0.0, 1.0))
            colour[lane], band[lane], tail[lane] = c, b, t
            opacity[lane] = rng.uniform(0.3, 0.45) if opacity[lane] == 0 else opacity[lane] * 0.5
    else:
        # Lactose is an inert excipient: almost no reactions.
        p_active, op = ((0.15, (0.15, 0.3)) if sample_name == "lactose" else (0.5, (0.45, 0.9)))
        lanes = [_random_lane(rng, p_active, op) for _ in range(LANE_COUNT)]
        colour = np.array([lane[0] for lane in lanes])
        opacity = np.array([lane[1] for lane in lanes])
        band = np.array([lane[2] for lane in lanes])
        tail = np.array([lane[3] for lane in lanes])
        if sample_name != "lactose" and opacity.max() == 0:
            opacity[rng.integers(LANE_COUNT)] = 0.7  # a drug must react somewhere
    for arr in (colour, opacity, band, tail):
        arr.setflags(write=False)
    return Barcode(colour=colour, opacity=opacity, band=band, tail=tail)


def lane_span(lane: int) -> tuple[int, int]:
    """x range [x0, x1) of lane ``lane`` (0 = A)."""
    if not 0 <= lane < LANE_COUNT:
        raise ValueError(f"lane must be in 0..{LANE_COUNT - 1}, got {lane}")
    x0 = LANE_X0 + LANE_WIDTH * lane
    return x0, x0 + LANE_WIDTH


# --------------------------------------------------------------------------------------
# Printed template (identical on every card)
# --------------------------------------------------------------------------------------


def _draw_template() -> Image.Image:
    """The printed card, drawn with a ``_PAD`` margin so small shifts are plain crops."""
    w, h = CARD_WIDTH + 2 * _PAD, CARD_HEIGHT + 2 * _PAD
    img = Image.new("RGB", (w, h), PAPER_RGB)
    draw = ImageDraw.Draw(img)

    def box(x0: int, y0: int, x1: int, y1: int, fill: tuple[int, int, int]) -> None:
        draw.rectangle((x0 + _PAD, y0 + _PAD, x1 + _PAD - 1, y1 + _PAD - 1), fill=fill)

    # Fiducial squares used by the real rectifier, in the four corners.
    for fx, fy in ((22, 22), (CARD_WIDTH - 82, 22), (22, CARD_HEIGHT - 82), (CARD_WIDTH - 82, CARD_HEIGHT - 82)):
        box(fx, fy, fx + 60, fy + 60, _INK_RGB)
        box(fx + 10, fy + 10, fx + 50, fy + 50, PAPER_RGB)
        box(fx + 20, fy + 20, fx + 40, fy + 40, _INK_RGB)

    # QR code / label block near the top; a fixed pattern, the same on every card.
    qx, qy, module, n_mod = 120, 40, 8, 25
    box(qx - 8, qy - 8, qx + module * n_mod + 8, qy + module * n_mod + 8, _INK_RGB)
    box(qx, qy, qx + module * n_mod, qy + module * n_mod, PAPER_RGB)
    modules = _rng("qr-pattern").random((n_mod, n_mod)) < 0.5
    for r, c in zip(*np.nonzero(modules)):
        mx, my = qx + module * int(c), qy + module * int(r)
        box(mx, my, mx + module, my + module, _INK_RGB)
    box(360, 60, 620, 110, (70, 70, 78))  # dark label strip
    box(360, 130, 560, 146, (150, 150, 156))
    box(360, 160, 600, 176, (150, 150, 156))
    box(360, 190, 520, 206, (150, 150, 156))

    # Lane letters, enlarged from Pillow's built-in bitmap font (no system fonts, so
    # the template is identical on every machine).
    font = ImageFont.load_default_imagefont()
    for lane, letter in enumerate(LANE_LETTERS):
        glyph = Image.new("L", (8, 12), 0)
        ImageDraw.Draw(glyph).text((1, 0), letter, fill=255, font=font)
        glyph = glyph.resize((16, 24), Image.Resampling.NEAREST)
        x0, x1 = lane_span(lane)
        img.paste(_INK_RGB, ((x0 + x1) // 2 - 8 + _PAD, 296 + _PAD), glyph)

    # Wax barriers between lanes and the frame around the lane area.
    for lane in range(LANE_COUNT + 1):
        x = LANE_X0 + LANE_WIDTH * lane
        box(x - 1, _LANE_TOP, x + 2, _LANE_BOTTOM, _WAX_RGB)
    box(LANE_X0 - 1, _LANE_TOP, LANE_X0 + LANE_COUNT * LANE_WIDTH + 2, _LANE_TOP + 3, _WAX_RGB)
    box(LANE_X0 - 1, _LANE_BOTTOM - 3, LANE_X0 + LANE_COUNT * LANE_WIDTH + 2, _LANE_BOTTOM, _WAX_RGB)
    # Tick marks at the top and bottom of the reaction zone (outside the lanes).
    for y in REACTION_ZONE:
        box(LANE_X0 - 24, y - 1, LANE_X0 - 6, y + 1, _INK_RGB)
        box(LANE_X0 + LANE_COUNT * LANE_WIDTH + 6, y - 1, LANE_X0 + LANE_COUNT * LANE_WIDTH + 24, y + 1, _INK_RGB)

    # Timer / instructions box at the bottom.
    box(120, 1080, 610, 1084, (120, 120, 128))
    box(120, 1100, 420, 1114, (150, 150, 156))
    return img


@lru_cache(maxsize=16)
def _template(sigma: float) -> np.ndarray:
    """Template blurred by ``sigma`` (quantised), read-only; cached because it is
    the most expensive part of a card and only ~9 distinct radii occur."""
    img = _draw_template()
    if sigma > 0:
        img = img.filter(ImageFilter.GaussianBlur(sigma))
    arr = np.asarray(img).copy()
    arr.setflags(write=False)
    return arr


# --------------------------------------------------------------------------------------
# Lane chemistry
# --------------------------------------------------------------------------------------


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


def _lane_absorbance(spec: CardSpec, seed: int, sigma: float) -> np.ndarray:
    """Absorbance (H_r, W_r, 3) of dye over ``_REGION``: pixel = base * (1 - A).

    Each lane is separable (column profile x row profile), so the camera blur is
    applied to the 1-D profiles instead of the image: exact for a Gaussian up to the
    low-frequency blotch texture, and far cheaper than blurring the region.
    """
    y0, y1, x0, x1 = _REGION
    rows = np.arange(y0, y1, dtype=float)
    cols = np.arange(x0, x1, dtype=float)
    code = drug_barcode(spec.sample_name)
    chem = _rng("chemistry", seed, spec.sample_id)  # shared by all photos of the sample

    strength = (0.3 + 0.7 * spec.quantity / 100.0) * chem.lognormal(0.0, 0.12)
    lane_gain = chem.lognormal(0.0, 0.2, LANE_COUNT)
    opacity = np.clip(code.opacity * strength * lane_gain, 0.0, 0.97)
    colour = np.clip(code.colour + chem.normal(0.0, 10.0, (LANE_COUNT, 3)), 0.0, 255.0)
    band = np.clip(code.band + chem.normal(0.0, 0.03, (LANE_COUNT, 2)), 0.0, 1.0)
    # Occasional spurious faint reaction (impurities, uneven swipe).
    if chem.random() < 0.2:
        lane = chem.integers(LANE_COUNT)
        opacity[lane] = max(opacity[lane], chem.uniform(0.08, 0.22))
        colour[lane] = _PALETTE[chem.integers(len(_PALETTE))]

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


# --------------------------------------------------------------------------------------
# Camera model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Camera:
    """Per-photo camera parameters."""

    mix: np.ndarray  # (3, 3) colour mixing, rows sum to 1 so neutral greys stay neutral
    gains: tuple[float, float, float]  # white balance x exposure, per channel
    gamma: float
    gradient: tuple[float, float]  # illumination slope along x and y over the card
    sigma: float  # Gaussian blur radius in px (quantised)
    noise: float  # sensor noise std in 8-bit levels
    shift: tuple[int, int]  # (dx, dy) in px


def _camera(spec: CardSpec, seed: int) -> _Camera:
    model = _rng("camera-model", spec.camera_type)  # fixed per phone model, any seed
    photo = _rng("photo", seed, spec.id)

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
    return _Camera(
        mix=mix.astype(np.float32),
        gains=tuple(float(g) for g in wb * exposure / centre),
        gamma=float(model.uniform(0.88, 1.12) * photo.uniform(0.96, 1.04)),
        gradient=(gx, gy),
        sigma=round(sigma / _SIGMA_STEP) * _SIGMA_STEP,
        noise=float(model.uniform(1.2, 3.5) * photo.uniform(0.8, 1.2)),
        shift=(int(photo.integers(-_PAD, _PAD + 1)), int(photo.integers(-_PAD, _PAD + 1))),
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


def _apply_camera(arr: np.ndarray, cam: _Camera, rng: np.random.Generator) -> np.ndarray:
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


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def render_card(spec: CardSpec, seed: int, *, camera: bool = True) -> Image.Image:
    """Render one card photo (730 x 1220 RGB), deterministic in ``(spec, seed)``.

    ``camera=False`` returns the ideal scan of the same physical card (chemistry noise
    kept, no camera effects) -- handy for tests and for visualising barcodes.
    ``spec.split`` does not influence the pixels.
    """
    return Image.fromarray(_render_array(spec, seed, camera=camera))


def _render_array(spec: CardSpec, seed: int, *, camera: bool = True) -> np.ndarray:
    cam = _camera(spec, seed) if camera else None
    sigma = cam.sigma if cam else 0.0
    dx, dy = cam.shift if cam else (0, 0)

    # Shifting the content by (dx, dy) = cropping the padded template at (PAD-dx, PAD-dy).
    tpl = _template(sigma)
    arr = tpl[_PAD - dy : _PAD - dy + CARD_HEIGHT, _PAD - dx : _PAD - dx + CARD_WIDTH].copy()

    y0, y1, x0, x1 = _REGION
    region = arr[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    lit = 1.0 - _lane_absorbance(spec, seed, sigma)
    lit *= region
    if cam is not None:
        # Colour mixing only matters where there is colour: the rest of the card is
        # near-neutral paper and ink, which row-normalised mixing leaves unchanged.
        lit = lit @ cam.mix.T
        np.clip(lit, 0.0, 255.0, out=lit)
    lit += 0.5  # round to nearest
    region[...] = lit.astype(np.uint8)

    if cam is None:
        return arr
    return _apply_camera(arr, cam, _rng("sensor", seed, spec.id))


# --------------------------------------------------------------------------------------
# PNG encoding and dataset writing
# --------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def encode_png(img: Image.Image | np.ndarray) -> bytes:
    """Encode an 8-bit RGB image (or an (H, W, 3) uint8 array) as a minimal,
    metadata-free PNG.

    Pillow's encoder always runs adaptive per-row filter selection, which costs
    ~40 ms on a noisy 730 x 1220 card and cannot be switched off.  For sensor-noise
    dominated photos, the "Up" filter on every scanline with Huffman-only deflate is
    both the fastest (~20 ms) and the smallest option measured (LZ77 matching finds
    nothing in noise), and the output is byte-for-byte deterministic (no
    timestamps, no ancillary chunks).
    """
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected 8-bit RGB, got {arr.dtype} array of shape {arr.shape}")
    h, w, _ = arr.shape
    rows = arr.reshape(h, 3 * w)
    raw = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    raw[:, 0] = 2  # filter type "Up": difference to the previous scanline, mod 256
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    comp = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    idat = comp.compress(raw.data) + comp.flush()
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes((8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class _Job:
    spec: CardSpec
    seed: int
    path: Path
    must_exist: bool


def _materialise(job: _Job) -> str:
    """Make sure the card's PNG exists; return its md5."""
    if job.path.exists():
        return _file_md5(job.path)
    if job.must_exist:
        raise FileNotFoundError(f"{job.path} is before start= but missing; rerun with a smaller start")
    data = encode_png(_render_array(job.spec, job.seed))
    _atomic_write(job.path, data)
    return hashlib.md5(data).hexdigest()


def _check_existing(specs: list[CardSpec], seed: int, images: Path) -> None:
    """Refuse to mix cards from another seed or generator version into a dataset.

    Existing PNGs are reused unverified (re-rendering them all would defeat
    incremental growth), and image names do not include the seed, so one sample
    card is re-rendered and compared.  Pixels are compared with a tolerance instead
    of bytes, so other zlib builds or last-bit float differences do not trip it.
    """
    existing = next((s for s in specs if (images / s.image_name).exists()), None)
    if existing is None:
        return
    with Image.open(images / existing.image_name) as img:
        on_disk = np.asarray(img.convert("RGB"), dtype=np.int16)
    expected = np.asarray(render_card(existing, seed), dtype=np.int16)
    if on_disk.shape != expected.shape or np.mean(np.abs(on_disk - expected) > 2) > 0.01:
        raise ValueError(
            f"{images / existing.image_name} was not generated with seed={seed} by this generator "
            "version; write into a fresh directory"
        )


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork: workers need no re-import of the caller's __main__ (stage scripts without a
    # main guard keep working); spawn elsewhere.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def write_dataset(
    out_dir: Path,
    n_cards: int,
    seed: int,
    test_fraction: float = 0.2,
    start: int = 0,
    url_prefix: str = "images/",
    *,
    workers: int | None = None,
) -> list[Path]:
    """Write ``out_dir/images/*.png`` plus ``metadata_dev.csv`` and ``metadata_test.csv``.

    Rows follow ``REGISTRY_COLUMNS`` and are sorted by id; ``url`` is
    ``url_prefix + image_name`` and ``hashlib_md5`` the md5 of the PNG bytes.

    Incremental use: a PNG that already exists is never re-rendered or rewritten
    (its md5 is read from disk); cards before index ``start`` must already exist.
    Image names carry no seed, so the first existing PNG that the plan names is
    re-rendered and compared: a same-named card left by another seed or generator
    version raises ``ValueError`` instead of silently mixing datasets.
    Because ``plan_cards`` has stable prefixes, growing ``n_cards`` with the same
    seed only adds files.  All writes are atomic (temp file + ``os.replace``) and
    rows are streamed, so memory does not grow with ``n_cards``.  Rendering is
    deterministic per card, so the output is identical for any ``workers`` count
    (default: all CPUs).  Returns ``[dev_csv, test_csv]``.
    """
    out_dir = Path(out_dir)
    if not 0 <= start <= n_cards:
        raise ValueError(f"start must be in [0, n_cards], got {start}")
    specs = plan_cards(n_cards, seed, test_fraction)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    _check_existing(specs, seed, images)
    jobs = (_Job(spec, seed, images / spec.image_name, i < start) for i, spec in enumerate(specs))
    # A pool only pays off beyond a handful of cards (fork + template warm-up).
    n_workers = max(1, min(workers if workers is not None else os.cpu_count() or 1, n_cards // 8))

    csv_paths = [out_dir / "metadata_dev.csv", out_dir / "metadata_test.csv"]
    tmp_files = [
        tempfile.NamedTemporaryFile("w", dir=out_dir, prefix=f".{p.name}.", suffix=".tmp", delete=False, newline="")
        for p in csv_paths
    ]
    try:
        writers = {split: csv.writer(fh, lineterminator="\n") for split, fh in zip(("dev", "test"), tmp_files)}
        for writer in writers.values():
            writer.writerow(REGISTRY_COLUMNS)
        with contextlib.ExitStack() as stack:
            if n_workers > 1:
                pool = stack.enter_context(_pool_context().Pool(n_workers))
                md5s: Iterator[str] = pool.imap(_materialise, jobs, chunksize=4)  # ordered
            else:
                md5s = map(_materialise, jobs)
            for spec, md5 in tqdm(zip(specs, md5s), total=n_cards, desc="synthetic PAD cards", unit="card"):
                row = (spec.id, spec.sample_id, spec.sample_name, spec.quantity, spec.camera_type)
                writers[spec.split].writerow((*row, url_prefix + spec.image_name, md5, spec.image_name))
        for fh, path in zip(tmp_files, csv_paths):
            fh.close()
            os.replace(fh.name, path)
    except BaseException:
        for fh in tmp_files:
            fh.close()
            Path(fh.name).unlink(missing_ok=True)
        raise
    return csv_paths
