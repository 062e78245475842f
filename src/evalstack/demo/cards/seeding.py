"""Deterministic randomness: generators and uniforms fixed by explicit keys.

Seeds are hashlib digests of the keys, so every draw is identical across processes
and Python versions, independent of call order and of how work is split.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _digest(*key: object) -> bytes:
    # repr() of ints/strs is stable across runs, unlike hash() which is salted.
    return hashlib.sha256("\x1f".join(repr(k) for k in key).encode()).digest()


def keyed_rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(_digest(*key)[:16], "little"))


def keyed_unit(*key: object) -> float:
    """A uniform number in [0, 1) fixed by ``key``."""
    return int.from_bytes(_digest(*key)[:8], "little") / 2.0**64
