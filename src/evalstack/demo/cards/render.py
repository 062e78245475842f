"""Rendering one card photo: printed template + lane chemistry + camera model."""

from __future__ import annotations

import numpy as np
from PIL import Image

from evalstack.demo.cards.camera import apply_camera, camera_for
from evalstack.demo.cards.cards import CardSpec
from evalstack.demo.cards.chemistry import lane_absorbance
from evalstack.demo.cards.geometry import CARD_HEIGHT, CARD_WIDTH, PAD, REGION
from evalstack.demo.cards.seeding import keyed_rng
from evalstack.demo.cards.template import printed_template


def render_card(spec: CardSpec, seed: int, *, camera: bool = True) -> Image.Image:
    """Render one card photo (730 x 1220 RGB), deterministic in ``(spec, seed)``.

    ``camera=False`` returns the ideal scan of the same physical card (chemistry noise
    kept, no camera effects) -- handy for tests and for visualising barcodes.
    ``spec.split`` does not influence the pixels.
    """
    return Image.fromarray(render_array(spec, seed, camera=camera))


def render_array(spec: CardSpec, seed: int, *, camera: bool = True) -> np.ndarray:
    """``render_card`` as an (H, W, 3) uint8 array, the form the dataset writer encodes."""
    cam = camera_for(spec, seed) if camera else None
    sigma = cam.sigma if cam else 0.0
    dx, dy = cam.shift if cam else (0, 0)

    # Shifting the content by (dx, dy) = cropping the padded template at (PAD-dx, PAD-dy).
    tpl = printed_template(sigma)
    arr = tpl[PAD - dy : PAD - dy + CARD_HEIGHT, PAD - dx : PAD - dx + CARD_WIDTH].copy()

    y0, y1, x0, x1 = REGION
    region = arr[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    lit = 1.0 - lane_absorbance(spec, seed, sigma)
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
    return apply_camera(arr, cam, keyed_rng("sensor", seed, spec.id))
