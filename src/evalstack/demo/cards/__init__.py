"""Deterministic generator of FHI2020-style PAD (paper analytical device) card photos.

The real FHI2020 PAD dataset consists of rectified phone photos of paper cards
(730 x 1220 px RGB PNG) with 12 reagent lanes A-L, each 53 px wide, starting at
x = 70.  A drug sample is swiped across the lanes, the card is developed in water,
and every lane's reagent changes colour (or not) in the reaction zone
y = 359..632, leaving faint wicking tails below it.  Models later crop
(71, 359, 707, 849) and resize to 454 x 454, so that band is what matters.

This package fabricates a look-alike dataset with the real registry layout
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

Modules, in import order: ``seeding`` (keyed randomness), ``geometry`` (card and
lane layout), ``cards`` (identities and the dev/test split), ``barcodes`` (drug
reaction patterns), ``template`` (the printed card), ``chemistry`` (lane dye),
``camera`` (phone effects), ``render`` (one photo), ``png`` (encoder) and
``dataset`` (PNGs + registry CSVs).
"""

from evalstack.demo.cards.barcodes import CONFUSABLE_PAIRS, Barcode, drug_barcode
from evalstack.demo.cards.cards import CAMERA_TYPES, DRUGS, FIRST_ID, FIRST_SAMPLE_ID, QUANTITIES, CardSpec, plan_cards
from evalstack.demo.cards.dataset import write_dataset
from evalstack.demo.cards.geometry import (
    CARD_HEIGHT,
    CARD_WIDTH,
    LANE_COUNT,
    LANE_LETTERS,
    LANE_WIDTH,
    LANE_X0,
    MODEL_CROP,
    PAPER_RGB,
    REACTION_ZONE,
    lane_span,
)
from evalstack.demo.cards.png import encode_png
from evalstack.demo.cards.render import render_card
from evalstack.sources.registry import REGISTRY_COLUMNS

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
