"""Incremental fetch planning: which items of the previous raw layer stay where they are.

The raw layer is a log. An item whose metadata (id, md5, labels, split, …) is unchanged
keeps its row in its old shard, so old shard files never change and DVC never uploads
them again. An item the source no longer lists is *excluded* in the index (its shard
keeps the bytes). Everything else is fresh and goes into new shards, in id order; its
bytes come from an old shard when the same image (id + md5) is there, else from the
download area, else from the source.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py

from evalstack.core.keys import Key
from evalstack.core.kinds import META_FIELDS
from evalstack.core.layers import SHARD_SUFFIX, ShardInfo, read_column
from evalstack.fetch.history import PreviousLayer
from evalstack.sources.registry import RegistryRow


@dataclass(frozen=True)
class OldRow:
    path: Path  # a shard file holding the bytes
    row: int


@dataclass
class RawPlan:
    kept: list[ShardInfo] = field(default_factory=list)  # previous shards, with updated exclusions
    kept_paths: dict[str, Path] = field(default_factory=dict)  # sha256 → where the bytes are
    fresh: list[RegistryRow] = field(default_factory=list)  # need a place in a new shard (id order)
    old_bytes: dict[tuple, OldRow] = field(default_factory=dict)  # identity → bytes in an old shard
    next_shard: int = 0
    removed: int = 0  # items the previous layer listed that the source no longer does

    @property
    def n_kept_items(self) -> int:
        return sum(shard.n_live for shard in self.kept)


def plan_layer(previous: PreviousLayer | None, rows: list[RegistryRow], key: Key) -> RawPlan:
    plan = RawPlan()
    if previous is None:
        plan.fresh = list(rows)
        return plan
    wanted = {row.metadata() for row in rows}
    placed: set[tuple] = set()
    same_layout = previous.index.key.hex == key.hex  # another shard size: rebuild, reusing bytes
    for shard in previous.index.shards:
        path = previous.shard_paths.get(shard.sha256)
        if path is None:  # bytes lost (store cleared): its items are fetched again
            continue
        metadata, identities = _read_rows(path)
        excluded = set(shard.excluded)
        plan.removed += sum(1 for r, meta in enumerate(metadata) if r not in excluded and meta not in wanted)
        for r, (meta, identity) in enumerate(zip(metadata, identities)):
            plan.old_bytes.setdefault(identity, OldRow(path, r))
            if r in excluded:
                continue
            if same_layout and meta in wanted and meta not in placed:
                placed.add(meta)
            else:
                excluded.add(r)
        if same_layout and len(excluded) < shard.n_items:
            plan.kept.append(replace(shard, excluded=tuple(sorted(excluded))))
            plan.kept_paths[shard.sha256] = path
    plan.fresh = [row for row in rows if row.metadata() not in placed]
    numbers = [int(s.name.removesuffix(SHARD_SUFFIX)) for s in previous.index.shards if s.name[:-3].isdigit()]
    plan.next_shard = max(numbers, default=-1) + 1 if same_layout else 0
    return plan


def _read_rows(path: Path) -> tuple[list[tuple], list[tuple]]:
    """Metadata tuples and identities of every row of a raw shard (in `RegistryRow` terms)."""
    with h5py.File(path, "r") as handle:
        columns = {name: read_column(handle, name) for name in META_FIELDS}
    n_rows = len(columns["id"])
    metadata = []
    for r in range(n_rows):
        values = [columns[name][r] for name in META_FIELDS]
        metadata.append(tuple(int(v) if name in ("id", "sample_id", "quantity") else str(v)
                              for name, v in zip(META_FIELDS, values)))
    identities = [RegistryRow(*meta).identity for meta in metadata]
    return metadata, identities
