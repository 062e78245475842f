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


CHECKSUM_ALGORITHM = "lin64"  # what `item_checksum` attributes name; `evalstack verify` recomputes it
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _odd_constants(start: int, n: int) -> np.ndarray:
    """n fixed odd 64-bit constants (SplitMix64 of start, start + 1, …): the same forever."""
    with np.errstate(over="ignore"):
        z = np.arange(start + 1, start + n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) | np.uint64(1)


def _words(flat: np.ndarray) -> np.ndarray:
    """Each row's bytes as little-endian 64-bit words (rows padded with zero bytes): (rows, words)."""
    flat = np.ascontiguousarray(flat)
    rows = len(flat)
    row_bytes = flat.itemsize * (flat.size // rows if rows else 1)
    if row_bytes == 4:  # float32/int32 scalars: widen, no byte shuffling
        return flat.reshape(rows).view("<u4").astype(np.uint64)[:, None]
    raw = flat.reshape(rows, -1).view(np.uint8).reshape(rows, row_bytes) if rows else np.zeros((0, 8), np.uint8)
    pad = -row_bytes % 8
    if pad:
        padded = np.zeros((rows, row_bytes + pad), np.uint8)
        padded[:, :row_bytes] = raw
        raw = padded
    return np.ascontiguousarray(raw).view("<u8")


def ragged_checksums(offsets: np.ndarray, flats: Sequence[np.ndarray]) -> np.ndarray:
    """A 64-bit checksum per item over its rows of each flat array (uint64), for all items at once.

    Word j of row r of flat array f (its bytes as 64-bit words) counts w · a_fj · b_r (mod 2^64)
    with fixed odd constants a (SplitMix64) and b_r = r · φ·2^64 | 1; an item's checksum is the sum
    over its rows, plus its row count. Changing any word — one flipped bit is enough — changes the
    item's checksum (the constants are odd), and so do rows moved between items or within one. It
    names the damaged item; the shard's sha256 in the index is what proves a whole file. Pure numpy at
    memory speed: a sha256 per item costs microseconds each, which a 20,000-image shard would feel.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    total = len(flats[0]) if flats else 0
    # Two buffers for everything (fresh large arrays cost page faults, more than the arithmetic).
    running = np.zeros(total + 1, dtype=np.uint64)  # running[1:] holds the per-row sums, then their prefix sums
    per_row, scratch = running[1:], np.empty(total, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for number, flat in enumerate(flats):
            if len(flat) != total:
                raise ValueError(f"flat arrays differ in length: {len(flat)} rows, {total} expected")
            words = _words(np.asarray(flat))
            for column, constant in enumerate(_odd_constants(1000 * (number + 1), words.shape[1])):
                np.multiply(words[:, column], constant, out=scratch)
                per_row += scratch
        scratch[:] = np.arange(total, dtype=np.uint64)
        scratch *= np.uint64(0x9E3779B97F4A7C15)
        scratch |= np.uint64(1)
        per_row *= scratch  # row weights b_r
        np.cumsum(per_row, out=per_row)
        ends = np.append(offsets[1:], total) if len(offsets) else offsets
        return running[ends] - running[offsets] + counts_of(offsets, total).astype(np.uint64) * np.uint64(
            0x9E3779B97F4A7C15)
