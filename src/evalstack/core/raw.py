"""The raw shard format: encoded image bytes in one flat array + offsets, metadata columns.

A group or dataset per image would be far slower to write and read (see core/layers.py), so
each raw shard holds `blob` (every image's bytes, concatenated), `offset`/`length`
per item, `item_key` (sha256 of the bytes) and the source's metadata.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from evalstack.core.keys import sha256_bytes
from evalstack.core.kinds import META_FIELDS
from evalstack.core.layers import ITEM_KEY

META_COLUMNS = META_FIELDS


@dataclass(frozen=True)
class FetchedItem:
    row: Any  # a sources.registry.RegistryRow (the core imports no source)
    data: bytes


def raw_columns(items: list[FetchedItem]) -> dict[str, np.ndarray]:
    """Metadata table + one flat byte array with offsets (no group per item)."""
    lengths = np.asarray([len(item.data) for item in items], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if items else lengths
    columns: dict[str, np.ndarray] = {
        ITEM_KEY: np.asarray([sha256_bytes(item.data) for item in items], dtype="S64"),
        "blob": np.frombuffer(b"".join(item.data for item in items), dtype=np.uint8),  # flat, see core/layers.py
        "offset": offsets,
        "length": lengths,
    }
    for name in META_COLUMNS:
        values = [getattr(item.row, name) for item in items]
        is_int = name in ("id", "sample_id", "quantity")
        columns[name] = np.asarray(values, dtype=np.int64 if is_int else object)
    return columns


def read_blobs(handle, rows: slice) -> list[bytes]:
    """Encoded image bytes of the given rows of an open raw shard."""
    offsets = handle["offset"][rows]
    lengths = handle["length"][rows]
    if len(offsets) == 0:
        return []
    start, stop = int(offsets[0]), int(offsets[-1] + lengths[-1])
    span = handle["blob"][start:stop].tobytes()
    return [span[o - start : o - start + n] for o, n in zip(offsets.tolist(), lengths.tolist())]
