"""The printed card (fiducials, label block, lane letters, wax barriers), identical
on every card and cached per blur radius."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from evalstack.demo.cards.geometry import (
    CARD_HEIGHT,
    CARD_WIDTH,
    LANE_BOTTOM,
    LANE_COUNT,
    LANE_LETTERS,
    LANE_TOP,
    LANE_WIDTH,
    LANE_X0,
    PAD,
    PAPER_RGB,
    REACTION_ZONE,
    lane_span,
)
from evalstack.demo.cards.seeding import keyed_rng

_WAX_RGB = (52, 58, 92)  # printed wax barriers between lanes
_INK_RGB = (28, 28, 32)


def _draw_template() -> Image.Image:
    """The printed card, drawn with a ``PAD`` margin so small shifts are plain crops."""
    w, h = CARD_WIDTH + 2 * PAD, CARD_HEIGHT + 2 * PAD
    img = Image.new("RGB", (w, h), PAPER_RGB)
    draw = ImageDraw.Draw(img)

    def box(x0: int, y0: int, x1: int, y1: int, fill: tuple[int, int, int]) -> None:
        draw.rectangle((x0 + PAD, y0 + PAD, x1 + PAD - 1, y1 + PAD - 1), fill=fill)

    # Fiducial squares used by the real rectifier, in the four corners.
    for fx, fy in ((22, 22), (CARD_WIDTH - 82, 22), (22, CARD_HEIGHT - 82), (CARD_WIDTH - 82, CARD_HEIGHT - 82)):
        box(fx, fy, fx + 60, fy + 60, _INK_RGB)
        box(fx + 10, fy + 10, fx + 50, fy + 50, PAPER_RGB)
        box(fx + 20, fy + 20, fx + 40, fy + 40, _INK_RGB)

    # QR code / label block near the top; a fixed pattern, the same on every card.
    qx, qy, module, n_mod = 120, 40, 8, 25
    box(qx - 8, qy - 8, qx + module * n_mod + 8, qy + module * n_mod + 8, _INK_RGB)
    box(qx, qy, qx + module * n_mod, qy + module * n_mod, PAPER_RGB)
    modules = keyed_rng("qr-pattern").random((n_mod, n_mod)) < 0.5
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
        img.paste(_INK_RGB, ((x0 + x1) // 2 - 8 + PAD, 296 + PAD), glyph)

    # Wax barriers between lanes and the frame around the lane area.
    for lane in range(LANE_COUNT + 1):
        x = LANE_X0 + LANE_WIDTH * lane
        box(x - 1, LANE_TOP, x + 2, LANE_BOTTOM, _WAX_RGB)
    box(LANE_X0 - 1, LANE_TOP, LANE_X0 + LANE_COUNT * LANE_WIDTH + 2, LANE_TOP + 3, _WAX_RGB)
    box(LANE_X0 - 1, LANE_BOTTOM - 3, LANE_X0 + LANE_COUNT * LANE_WIDTH + 2, LANE_BOTTOM, _WAX_RGB)
    # Tick marks at the top and bottom of the reaction zone (outside the lanes).
    for y in REACTION_ZONE:
        box(LANE_X0 - 24, y - 1, LANE_X0 - 6, y + 1, _INK_RGB)
        box(LANE_X0 + LANE_COUNT * LANE_WIDTH + 6, y - 1, LANE_X0 + LANE_COUNT * LANE_WIDTH + 24, y + 1, _INK_RGB)

    # Timer / instructions box at the bottom.
    box(120, 1080, 610, 1084, (120, 120, 128))
    box(120, 1100, 420, 1114, (150, 150, 156))
    return img


@lru_cache(maxsize=16)
def printed_template(sigma: float) -> np.ndarray:
    """Template blurred by ``sigma`` (quantised), read-only; cached because it is
    the most expensive part of a card and only ~9 distinct radii occur."""
    img = _draw_template()
    if sigma > 0:
        img = img.filter(ImageFilter.GaussianBlur(sigma))
    arr = np.asarray(img).copy()
    arr.setflags(write=False)
    return arr
