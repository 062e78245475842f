"""Ragged per-item data (boxes per image) as one flat array per field + one offset per item.

A group or dataset per item costs HDF5 a b-tree node and metadata each; one flat
array per field plus an offset column is written and read in one call each.
Item i owns rows offsets[i]:offsets[i+1] (the last item runs to the end), so an
item with nothing — an image without boxes — is an empty range, still present.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def offsets_for(counts: np.ndarray) -> np.ndarray:
    """Start of each item's range (exclusive prefix sum of `counts`)."""
    offsets = np.zeros(len(counts), dtype=np.int64)
    if len(counts) > 1:
        np.cumsum(counts[:-1], out=offsets[1:])
    return offsets


def counts_of(offsets: np.ndarray, total: int) -> np.ndarray:
    """Rows per item, from the offsets and the flat array's length."""
    return np.diff(np.append(np.asarray(offsets, dtype=np.int64), total))


def pack(arrays: Sequence[np.ndarray], dtype: np.dtype | type, tail: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(flat, offsets) for per-item arrays of shape (n_i, *tail); empty items allowed."""
    counts = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
    if not len(arrays):
        return np.zeros((0, *tail), dtype=dtype), counts
    try:  # the common case, arrays already shaped (n_i, *tail): one call, no per-item work
        flat = np.concatenate(arrays).astype(dtype, copy=False)
    except ValueError:  # e.g. an empty list standing for (0, 4)
        flat = np.concatenate([np.asarray(a, dtype=dtype).reshape(-1, *tail) for a in arrays])
    if flat.shape[1:] != tail or len(flat) != counts.sum():
        raise ValueError(f"per-item arrays do not have the shape (n, {', '.join(map(str, tail))})")
    return flat, offsets_for(counts)


def unpack(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Per-item views into `flat` (no copies)."""
    bounds = np.append(np.asarray(offsets, dtype=np.int64), len(flat)).tolist()
    return [flat[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]


def check_offsets(offsets: np.ndarray, total: int, what: str) -> None:
    """Offsets must start at 0 and never decrease or pass the end; anything else is a corrupt layer."""
    if len(offsets) and (offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] > total):
        raise ValueError(f"{what}: offsets do not describe ranges of the {total} flat rows")
    if not len(offsets) and total:
        raise ValueError(f"{what}: {total} flat rows belong to no item")
