"""Drug barcodes: each drug's fixed 12-lane reaction pattern, with a few near twins."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from evalstack.demo.cards.cards import DRUGS
from evalstack.demo.cards.geometry import LANE_COUNT
from evalstack.demo.cards.seeding import keyed_rng

# (derived drug, base drug, number of lanes that differ).  Chemically related drugs
# react alike on real PADs; a weak extra/missing lane keeps them hard to separate.
CONFUSABLE_PAIRS: tuple[tuple[str, str, int], ...] = (
    ("hydroxychloroquine", "chloroquine", 1),
    ("amoxicillin", "ampicillin", 1),
    ("tetracycline", "doxycycline", 2),
)

# Fully developed reaction colours (dye on white paper); barcodes pick from these.
PALETTE: tuple[tuple[int, int, int], ...] = (
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
    colour = np.clip(np.array(PALETTE[rng.integers(len(PALETTE))], float) + rng.normal(0, 10, 3), 0, 255)
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
    rng = keyed_rng("barcode", sample_name)
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
