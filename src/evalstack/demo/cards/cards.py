"""Card identities (drug, quantity, phone) and the dev/test split: ``plan_cards``."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from evalstack.demo.cards.seeding import keyed_rng, keyed_unit

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

FIRST_ID = 15000
FIRST_SAMPLE_ID = 50000


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
        rng = keyed_rng("cycle", seed, cycle)
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
    order = keyed_rng("split-order", seed).permutation(len(DRUGS))
    rank = int(np.flatnonzero(order == DRUGS.index(sample_name))[0])
    return (rank + keyed_unit("split-offset", seed)) / len(DRUGS)


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
        rng = keyed_rng("photos", seed, sample.index)
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
