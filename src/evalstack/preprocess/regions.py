"""PAD's PLS feature extraction, and the `pad_regions` pipeline: 12 lanes × 10 regions × RGB = 360 numbers per card.

Equal to pad-analytics 0.2.2's `regionRoutine.fullRoutine(img, intensityFind.findMaxIntensitiesFiltered,
{}, True, 10)` on the card as `cv.imread` reads it (tests/test_pad_analytics.py checks it against the
package itself); written from its behaviour, not copied:

- lanes A–L: x from 17 + 53·l + 12 to 17 + 53·(l + 1) − 12 for l = 1..12
  (29 px inside each 53 px lane, 12 px border on either side);
- regions: the reaction zone y 359–632 cut into equal bands,
  y from 359 + ⌊273·r/R⌋ to 359 + ⌊273·(r + 1)/R⌋;
- in each box, HSV saturation and value (OpenCV's 8-bit BGR2HSV) are weighted by
  cos(π/2 · max(|dx|/cx, |dy|/cy)) around the box centre, and every pixel that is
  not dark after weighting (dark: S ≤ 35 and V ≤ 70) is kept. The function's name
  and comments still speak of "most intense" pixels: its running-maximum branch
  is commented out in 0.2.2 (since ColorSelector commit fca56c8, Oct 2021), so it
  averages all non-dark pixels, and so do we;
- the feature is the mean R, G, B of the kept pixels, each rounded half up to
  an integer (0 when no pixel is kept); order: lane, region, then R, G, B.

Older copies (ColorSelector before fca56c8, the Android app's Java port) keep the
running maximum live and return unrounded means. No published PLS model is known
to have been trained on those features, so that variant is not offered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from evalstack.preprocess.modes import rgb
from evalstack.preprocess.pipelines import PipelineError, PreprocessingPipeline

LANES = 12
LANE_PITCH = 53
LANE_ORIGIN = 17  # lane l (1-based) starts at 17 + 53·l, i.e. lane A at x = 70
LANE_BORDER = 12
ZONE_TOP = 359
ZONE_HEIGHT = 273  # reaction zone y 359–632
DARK_SATURATION = 35
DARK_VALUE = 70
_HSV_SHIFT = 12  # OpenCV computes 8-bit saturation in 12-bit fixed point


def lane_box(lane: int) -> tuple[int, int]:
    """x range [start, end) of lane 1..12 (A..L)."""
    return LANE_ORIGIN + LANE_PITCH * lane + LANE_BORDER, LANE_ORIGIN + LANE_PITCH * (lane + 1) - LANE_BORDER


def region_box(region: int, regions: int) -> tuple[int, int]:
    """y range [start, end) of region 0..regions-1 of the reaction zone."""
    return (
        ZONE_TOP + math.floor(ZONE_HEIGHT * region / regions),
        ZONE_TOP + math.floor(ZONE_HEIGHT * (region + 1) / regions),
    )


def feature_names(regions: int = 10) -> list[str]:
    """Upstream's column names: A1-R, A1-G, A1-B, A2-R, … L10-B."""
    return [f"{chr(ord('A') + lane)}{region + 1}-{colour}"
            for lane in range(LANES) for region in range(regions) for colour in "RGB"]


@lru_cache(maxsize=None)
def _saturation_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.int32)  # ≤ 255 << 12, so spread × table ≤ 2^28: int32 holds it exactly
    table[1:] = np.round((255 << _HSV_SHIFT) / np.arange(1, 256))
    return table


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-bit HSV saturation and value, as OpenCV's BGR2HSV computes them (of a uint8 RGB array).

    The channels are compared pairwise in uint8 and only the spread is widened: a reduction over the last axis
    of size 3 in int64 took ~9 ms of the ~13 ms of a card's features, this ~1 ms, with the same integers
    (tests/test_regions.py compares every one of the 2^24 colours with cv2.cvtColor)."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = np.maximum(np.maximum(red, green), blue)
    spread = value - np.minimum(np.minimum(red, green), blue)  # ≥ 0: no uint8 wrap-around
    saturation = (spread.astype(np.int32) * _saturation_table()[value] + (1 << (_HSV_SHIFT - 1))) >> _HSV_SHIFT
    return saturation, value


@lru_cache(maxsize=None)
def _centre_weights(rows: int, cols: int) -> np.ndarray:
    centre_row, centre_col = rows / 2, cols / 2
    # math.cos per element, as upstream does, so the dark thresholds are tested on the same doubles.
    return np.asarray(
        [[math.cos(math.pi / 2 * max(abs(centre_row - i) / centre_row, abs(centre_col - j) / centre_col))
          for j in range(cols)] for i in range(rows)],
        dtype=np.float64,
    )


def selected_pixels(saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Mask of the pixels upstream averages in one box: not dark once centre-weighted."""
    weights = _centre_weights(*saturation.shape)
    return ~((weights * saturation <= DARK_SATURATION) & (weights * value <= DARK_VALUE))


def _mean_rgb(box: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    count = int(chosen.sum())
    if count == 0:
        return np.zeros(3)
    # Sums of 8-bit values are exact in float64 whatever the order, so this equals upstream's
    # pixel-by-pixel float accumulation; int(x + 0.5) is floor(x + 0.5) for x >= 0.
    mean = box[chosen].astype(np.float64).sum(axis=0) / count
    return np.floor(mean + 0.5)


def region_features(card: np.ndarray, regions: int = 10) -> np.ndarray:
    """The (12·regions·3,) feature vector of an RGB card array (H, W, 3) uint8."""
    right = lane_box(LANES)[1]
    bottom = ZONE_TOP + ZONE_HEIGHT
    if card.ndim != 3 or card.shape[2] != 3 or card.shape[0] < bottom or card.shape[1] < right:
        raise ValueError(
            f"card of shape {card.shape} cannot hold the PAD reaction zone "
            f"(needs at least {bottom} × {right} RGB; PAD cards are 1220 × 730)"
        )
    saturation, value = saturation_value(card[ZONE_TOP:bottom, :right])
    features = np.empty((LANES, regions, 3), dtype=np.float32)
    for lane in range(LANES):
        x0, x1 = lane_box(lane + 1)
        for region in range(regions):
            y0, y1 = region_box(region, regions)
            rows = slice(y0 - ZONE_TOP, y1 - ZONE_TOP)
            chosen = selected_pixels(saturation[rows, x0:x1], value[rows, x0:x1])
            features[lane, region] = _mean_rgb(card[y0:y1, x0:x1], chosen)
    return features.reshape(-1)


@dataclass(frozen=True)
class PadRegionsPipeline(PreprocessingPipeline):
    """PAD's PLS input: 12 lanes × `regions` bands × RGB of the reaction zone (`region_features` above).

    Values are integers 0–255 like upstream's, kept as float32 because that is
    what the PLS dot product consumes.
    """

    regions: int = 10
    kind: ClassVar[str] = "pad_regions"

    def __post_init__(self) -> None:
        if not 1 <= self.regions <= 273:
            raise PipelineError(f"regions {self.regions} out of range 1–273")

    def parameters(self) -> dict[str, Any]:
        return {"regions": self.regions}

    def output_shape(self) -> tuple[int, ...]:
        return (12 * self.regions * 3,)

    def output_dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def process_image(self, image: Image.Image) -> np.ndarray:
        try:
            return region_features(np.asarray(rgb(image), dtype=np.uint8), self.regions)
        except ValueError as error:
            raise PipelineError(str(error)) from None
