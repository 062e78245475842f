"""Ragged per-item data (boxes per image) as one flat array + per-item offset and count.

A group or dataset per item costs HDF5 a b-tree node and metadata each; one flat
array per field with two integer columns is written and read in one call, and
an item with nothing (an image without boxes) is simply a count of zero.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def offsets_for(counts: np.ndarray) -> np.ndarray:
    """Start of each item's range in the flat array (exclusive prefix sum of `counts`)."""
    offsets = np.zeros(len(counts), dtype=np.int64)
    if len(counts) > 1:
        np.cumsum(counts[:-1], out=offsets[1:])
    return offsets


def pack(arrays: Sequence[np.ndarray], dtype: np.dtype | type, tail: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(flat, counts) for per-item arrays of shape (n_i, *tail); empty items allowed."""
    counts = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    parts = [np.asarray(a, dtype=dtype).reshape(-1, *tail) for a in arrays]
    flat = np.concatenate(parts) if parts else np.zeros((0, *tail), dtype=dtype)
    return flat, counts


def unpack(flat: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Per-item views into `flat` (no copies)."""
    return [flat[start : start + n] for start, n in zip(offsets.tolist(), counts.tolist())]


def check_ranges(offsets: np.ndarray, counts: np.ndarray, flat_len: int, what: str) -> None:
    """Offsets must tile the flat array exactly, in order; anything else is a corrupt layer."""
    if len(offsets) != len(counts) or np.any(counts < 0):
        raise ValueError(f"{what}: offsets and counts do not describe ranges")
    if not np.array_equal(offsets, offsets_for(counts)) or int(counts.sum()) != flat_len:
        raise ValueError(f"{what}: ranges do not cover the {flat_len} flat rows exactly")
