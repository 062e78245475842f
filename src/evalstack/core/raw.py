"""The raw shard format: encoded image bytes in one flat array + offsets, metadata columns;
and where one raw shard ends and the next begins.

A group or dataset per image would be far slower to write and read (see core/layers.py), so
each raw shard holds `blob` (every image's bytes, concatenated), `offset`/`length`
per item, `item_key` (sha256 of the bytes), `pixels` (width × height, from the image's header:
a re-fetch checks kept items against `fetch.max_pixels` without opening them) and the source's
metadata.

Shard boundaries are content-defined (as in rsync or FastCDC, over items instead of
bytes): a shard may end after an item when a hash of the item's identity falls below
(item bytes / target bytes), within a floor and a ceiling of the target. So the same
listing always gives the same shards, however the project got there (a layer does not
depend on its history), and an edit stays local: an appended item changes only the last
shard, a removed or changed item only the shard that held it (and rarely its neighbour).
Every derived layer has one shard per raw shard, so this holds downstream too.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from evalstack.core.keys import sha256_bytes
from evalstack.core.kinds import META_FIELDS
from evalstack.core.layers import ITEM_KEY, ShardColumns

META_COLUMNS = META_FIELDS


@dataclass(frozen=True)
class FetchedItem:
    row: Any  # a sources.registry.RegistryRow (the core imports no source)
    data: bytes
    pixels: int  # width × height, read from the image's header by the fetch that checked it


def raw_columns(items: list[FetchedItem]) -> dict[str, np.ndarray]:
    """Metadata table + one flat byte array with offsets (no group per item)."""
    lengths = np.asarray([len(item.data) for item in items], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if items else lengths
    columns: dict[str, np.ndarray] = {
        ITEM_KEY: np.asarray([sha256_bytes(item.data) for item in items], dtype="S64"),
        "blob": np.frombuffer(b"".join(item.data for item in items), dtype=np.uint8),  # flat, see core/layers.py
        "offset": offsets,
        "length": lengths,
        "pixels": np.asarray([item.pixels for item in items], dtype=np.int64),
    }
    for name in META_COLUMNS:
        values = [getattr(item.row, name) for item in items]
        if name in ("id", "sample_id", "quantity"):
            columns[name] = np.asarray(values, dtype=np.int64)
        else:  # fixed-width UTF-8: plain bytes the layer index locates, read without HDF5 (ShardColumns)
            columns[name] = np.asarray([str(value).encode() for value in values], dtype=np.bytes_)
    return columns


# Image bytes are compressed already (PNG, JPEG): compressing them again costs time and saves nothing.
RAW_COMPRESSION = "none"


def raw_shard(items: list[FetchedItem]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The columns of a raw shard holding `items`, and `LayerWriter.add_shard`'s options for them. The whole
    shard format is in this module because the raw layer's key covers this module's code only: a previous
    shard file is reused whenever the key and its rows are unchanged (fetch/plan.py)."""
    columns = raw_columns(items)
    flat = {"blob": columns.pop("blob")}
    # The item key is the sha256 of the image bytes, so it doubles as the per-item checksum.
    return columns, {"flat": flat, "checksum_of": ("blob",), "checksum_column": ITEM_KEY}


def read_blobs(handle, rows: slice) -> list[bytes]:
    """Encoded image bytes of the given rows of an open raw shard (an h5py.File or a ShardColumns)."""
    read = handle.read if isinstance(handle, ShardColumns) else lambda name, part: handle[name][part]
    offsets = read("offset", rows)
    lengths = read("length", rows)
    if len(offsets) == 0:
        return []
    start, stop = int(offsets[0]), int(offsets[-1] + lengths[-1])
    span = read("blob", slice(start, stop)).tobytes()
    return [span[o - start : o - start + n] for o, n in zip(offsets.tolist(), lengths.tolist())]


MIN_SHARE, MAX_FACTOR = 0.25, 4.0  # a shard holds at least 1/4 and at most 4× the target bytes (bar the last)
# Measured on 1,500 card-sized items at the default target: shards of 12–70 items (p10–p90, mean 37),
# and removing any one item rewrote 1.01 shards on average, never more than 2. FastCDC's normalised
# chunking narrowed the sizes (14–46) but rewrote up to 4 shards per removal: locality wins here.


class ShardCutter:
    """`shard_ends` one item at a time, for listings streamed in order: `add` says whether a shard
    ends after the item just added."""

    def __init__(self, target_bytes: int):
        if target_bytes < 1:
            raise ValueError(f"target bytes per shard must be >= 1, got {target_bytes}")
        self.target = target_bytes
        self.floor, self.ceiling = MIN_SHARE * target_bytes, MAX_FACTOR * target_bytes
        self.filled = 0

    def add(self, identity: str, size: int) -> bool:
        self.filled += size
        if self.filled >= self.ceiling or (self.filled >= self.floor and _cut_after(identity, size / self.target)):
            self.filled = 0
            return True
        return False


def shard_ends(identities: Sequence[str], sizes: Sequence[int], target_bytes: int) -> list[int]:
    """Exclusive end row of each shard for items listed in order, with their identities and sizes."""
    cutter = ShardCutter(target_bytes)
    ends = [row + 1 for row, (identity, size) in enumerate(zip(identities, sizes)) if cutter.add(identity, size)]
    if not ends or ends[-1] != len(identities):
        if len(identities):
            ends.append(len(identities))
    return ends


def _cut_after(identity: str, odds: float) -> bool:
    draw = int.from_bytes(hashlib.sha256(f"shard-cut:{identity}".encode()).digest()[:8], "little") / 2.0**64
    return draw < min(1.0, odds)
