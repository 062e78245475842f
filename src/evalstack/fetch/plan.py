"""Fetch planning: what the previous raw layer already holds, so a re-fetch reads and writes little.

The raw layer is a pure function of the listing (items in id order, their bytes) and the
shard format: shard boundaries are content-defined (`core.raw.shard_ends`). A re-fetch
therefore decides nothing from history; history only saves work:

- an item whose image (id + md5) is in a previous shard is not downloaded again;
- a new shard whose rows (metadata + item key, in order) equal a previous shard's, under the
  same layer key, is that shard: its file is reused as it is, never rewritten.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py

from evalstack.core.keys import Key, canonical_json
from evalstack.core.kinds import META_FIELDS
from evalstack.core.layers import ITEM_KEY, ShardInfo, read_column
from evalstack.fetch.history import PreviousLayer
from evalstack.sources.registry import RegistryRow


@dataclass(frozen=True)
class OldRow:
    path: Path  # a previous shard file holding the bytes
    row: int
    item_key: str
    length: int


@dataclass(frozen=True)
class OldShard:
    info: ShardInfo
    path: Path


@dataclass
class RawPlan:
    old_rows: dict[tuple, OldRow] = field(default_factory=dict)  # identity → bytes in a previous shard
    old_shards: dict[str, OldShard] = field(default_factory=dict)  # rows signature → previous shard (same key)
    previous_items: dict[tuple, RegistryRow] = field(default_factory=dict)  # identity → row, as last fetched

    def removed(self, rows: Sequence[RegistryRow]) -> list[RegistryRow]:
        """Items the previous layer held that `rows` no longer list (same id and md5)."""
        listed = {row.identity for row in rows}
        return [row for identity, row in self.previous_items.items() if identity not in listed]


def rows_signature(metadata: Sequence[tuple], item_keys: Sequence[str]) -> str:
    """What a raw shard holds, row by row: equal signatures (under one layer key) mean equal files."""
    rows = [[list(meta), key] for meta, key in zip(metadata, item_keys)]
    return hashlib.sha256(canonical_json(rows).encode()).hexdigest()


def plan_layer(previous: PreviousLayer | None, key: Key) -> RawPlan:
    plan = RawPlan()
    if previous is None:
        return plan
    same_layout = previous.index.key.hex == key.hex  # another format or target size: rebuild, reusing bytes
    for shard in previous.index.shards:
        path = previous.shard_paths.get(shard.sha256)
        if path is None:  # bytes lost (store cleared): its items are fetched again
            continue
        metadata, item_keys, lengths = read_rows(path)
        for row, (meta, item_key, length) in enumerate(zip(metadata, item_keys, lengths)):
            listed = RegistryRow(*meta)
            plan.previous_items[listed.identity] = listed
            plan.old_rows.setdefault(listed.identity, OldRow(path, row, item_key, length))
        if same_layout:
            plan.old_shards[rows_signature(metadata, item_keys)] = OldShard(shard, path)
    return plan


def read_rows(path: Path) -> tuple[list[tuple], list[str], list[int]]:
    """Metadata tuples (in `RegistryRow` field order), item keys and byte lengths of a raw shard's rows."""
    with h5py.File(path, "r") as handle:
        columns = {name: read_column(handle, name) for name in META_FIELDS}
        item_keys = [key.decode() if isinstance(key, bytes) else str(key) for key in read_column(handle, ITEM_KEY)]
        lengths = [int(n) for n in read_column(handle, "length")]
    metadata = [
        tuple(int(columns[name][r]) if name in ("id", "sample_id", "quantity") else str(columns[name][r])
              for name in META_FIELDS)
        for r in range(len(item_keys))
    ]
    return metadata, item_keys, lengths
