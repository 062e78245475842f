"""Fetch planning: what the previous raw layer already holds, so a re-fetch reads and writes little.

The raw layer is a pure function of the listing (items in id order, their bytes) and the
shard format: shard boundaries are content-defined (`core.raw.shard_ends`). A re-fetch
therefore decides nothing from history; history only saves work:

- an item whose image (id + md5) is in a previous shard is not downloaded again;
- a new shard whose rows are exactly a previous shard's rows (same items, same metadata, in
  order), under the same layer key, is that shard: its file is reused as it is, never rewritten.

The previous layer's rows go into fetch's listing database (fetch/listing.py) shard by
shard, so planning holds one shard's rows in memory, not the layer's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evalstack.core.keys import Key
from evalstack.core.layers import ShardInfo
from evalstack.fetch.history import PreviousLayer
from evalstack.fetch.listing import Listing


@dataclass(frozen=True)
class OldShard:
    info: ShardInfo
    path: Path | None


@dataclass
class RawPlan:
    old_shards: dict[int, OldShard] = field(default_factory=dict)  # previous shard number → its file
    same_layout: bool = False  # same layer key: a shard with a previous shard's rows is that file

    def reusable(self, number: int, rows: list[tuple[int, int]], metadata_equal: bool) -> OldShard | None:
        """The previous shard a new shard with these (previous shard, row) items is, if any."""
        old = self.old_shards.get(number)
        if not self.same_layout or old is None or not metadata_equal or len(rows) != old.info.n_items:
            return None
        return old if all(where == (number, row) for row, where in enumerate(rows)) else None


def plan_layer(previous: PreviousLayer | None, key: Key, listing: Listing) -> RawPlan:
    """Record where the previous layer's items are (in `listing`) and which of its shard files exist."""
    plan = RawPlan()
    if previous is None:
        return plan
    plan.same_layout = previous.index.key.hex == key.hex  # another format or target size: rebuild, reusing bytes
    for number, shard in enumerate(previous.index.shards):
        path = previous.shard_paths.get(shard.sha256)
        if path is None:  # bytes lost (store cleared): its items are fetched again
            continue
        # Another checkout's items are reused only when the source states their md5: one identified by its
        # URL alone may have changed at that URL since that checkout fetched it, so it is downloaded again.
        listing.add_previous_shard(number, shard, path, md5_only=not previous.own)
        plan.old_shards[number] = OldShard(shard, path)
    return plan
