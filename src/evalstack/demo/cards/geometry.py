"""Card geometry: the 730 x 1220 card, its 12 reagent lanes and the reaction zone."""

from __future__ import annotations

CARD_WIDTH, CARD_HEIGHT = 730, 1220

LANE_COUNT = 12
LANE_LETTERS = "ABCDEFGHIJKL"
LANE_X0 = 70
LANE_WIDTH = 53
REACTION_ZONE: tuple[int, int] = (359, 632)  # y range [top, bottom)
MODEL_CROP: tuple[int, int, int, int] = (71, 359, 707, 849)  # PIL box used by the NN preprocessing
PAPER_RGB: tuple[int, int, int] = (238, 236, 229)

# Internal layout shared by the template, the lane chemistry and the renderer.
PAD = 4  # max shift in px; the template is drawn with this margin so shifts are crops
LANE_TOP = 330  # wax barriers span this y range
LANE_BOTTOM = 880
REGION = (LANE_TOP, LANE_BOTTOM, LANE_X0 - 6, LANE_X0 + LANE_COUNT * LANE_WIDTH + 6)  # y0,y1,x0,x1 with dye


def lane_span(lane: int) -> tuple[int, int]:
    """x range [x0, x1) of lane ``lane`` (0 = A)."""
    if not 0 <= lane < LANE_COUNT:
        raise ValueError(f"lane must be in 0..{LANE_COUNT - 1}, got {lane}")
    x0 = LANE_X0 + LANE_WIDTH * lane
    return x0, x0 + LANE_WIDTH
