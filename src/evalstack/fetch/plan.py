"""Fetch planning: what the previous raw layer already holds, so a re-fetch reads and writes little.

The raw layer is a pure function of the listing (items in id order, their bytes) and the
shard format: shard boundaries are content-defined (`core.raw.shard_ends`). A re-fetch
therefore decides nothing from history; history only saves work:

- an item whose image (id + md5) is in a previous shard is not downloaded again;
- a new shard whose rows are exactly a previous shard's rows (same items, same metadata, in
  order), under the same layer key, is that shard: its file is reused as it is, never rewritten.

Reuse never skips a check a fetch from nothing would make. A previous item that today's checks
refuse is forgotten here, so it is downloaded and checked again, and fails (or is skipped) exactly
as in a fresh fetch, with the same message:
- the caps (`fetch.max_pixels`, `fetch.max_bytes`) may have been lowered since it was downloaded.
  Every raw shard records its items' byte lengths and pixel counts (columns its sha256 covers),
  so this opens no image; a shard written before pixel counts were recorded has its images'
  headers read once;
- the checks themselves may have changed (`sources/images.py`, Pillow): the index records what
  checked its items (`CHECKED_BY`), and under other checks every kept item is checked again in full.

The previous layer's rows go into fetch's listing database (fetch/listing.py) shard by
shard, so planning holds one shard's rows in memory, not the layer's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evalstack.core.fingerprint import code_part, runtime_part
from evalstack.core.keys import Key
from evalstack.core.layers import ShardColumns, ShardInfo
from evalstack.core.raw import read_blobs
from evalstack.fetch.history import PreviousLayer
from evalstack.fetch.listing import Listing, pixel_counts
from evalstack.sources.images import accepted, image_pixels

# The raw index's stats entry: what checked the layer's images (item_checks()).
CHECKED_BY = "images_checked_by"


def item_checks() -> dict[str, dict[str, str]]:
    """What decides whether an image is accepted: the checks' code and the Pillow that decodes it."""
    return {"code": code_part("evalstack.sources.images"), "runtime": runtime_part("pillow")}


@dataclass(frozen=True)
class ItemCaps:
    """What a fetch from nothing refuses: `fetch.max_pixels` and `fetch.max_bytes`."""

    max_pixels: int
    max_bytes: int


@dataclass(frozen=True)
class OldShard:
    info: ShardInfo
    path: Path | None


@dataclass
class RawPlan:
    old_shards: dict[int, OldShard] = field(default_factory=dict)  # previous shard number → its file
    same_layout: bool = False  # same layer key: a shard with a previous shard's rows is that file
    rechecked: int = 0  # previous items today's checks refuse: downloaded and checked again
    uncounted: set[int] = field(default_factory=set)  # previous shards without pixel counts: always rewritten
    checks: dict[str, dict[str, str]] = field(default_factory=dict)  # what checks this layer's items (CHECKED_BY)

    def reusable(self, number: int, rows: list[tuple[int, int]], metadata_equal: bool) -> OldShard | None:
        """The previous shard a new shard with these (previous shard, row) items is, if any."""
        old = self.old_shards.get(number)
        if (not self.same_layout or old is None or number in self.uncounted or not metadata_equal
                or len(rows) != old.info.n_items):
            return None
        return old if all(where == (number, row) for row, where in enumerate(rows)) else None


def plan_layer(previous: PreviousLayer | None, key: Key, listing: Listing, caps: ItemCaps,
               checks: dict[str, dict[str, str]]) -> RawPlan:
    """Record where the previous layer's items are (in `listing`) and which of its shard files exist;
    previous items above `caps`, or refused by today's `checks`, are left out, so they are fetched and
    checked again."""
    plan = RawPlan(checks=checks)
    if previous is None:
        return plan
    plan.same_layout = previous.index.key.hex == key.hex  # another format or target size: rebuild, reusing bytes
    in_full = _checked_otherwise(previous, checks)
    for number, shard in enumerate(previous.index.shards):
        path = previous.shard_paths.get(shard.sha256)
        if path is None:  # bytes lost (store cleared): its items are fetched again
            continue
        # Another checkout's items are reused only when the source states their md5: one identified by its
        # URL alone may have changed at that URL since that checkout fetched it, so it is downloaded again.
        metas, counted = listing.add_previous_shard(number, shard, path, md5_only=not previous.own)
        plan.old_shards[number] = OldShard(shard, path)
        if not counted:  # written before raw shards recorded pixel counts (another key, so rewritten anyway)
            plan.uncounted.add(number)
        if in_full or not counted:
            refused = _check_again(shard, path, caps.max_pixels, in_full)
            plan.rechecked += listing.forget_previous([metas[row][0] for row in refused])
    plan.rechecked += listing.forget_previous_above(caps.max_pixels, caps.max_bytes)
    return plan


def items_refused(previous: PreviousLayer, caps: ItemCaps, checks: dict[str, dict[str, str]]) -> list[int]:
    """Ids of the previous layer's items that `caps` or today's `checks` refuse: from its columns, unless the
    layer was checked by other checks (every image checked again) or written before pixel counts were
    recorded (its images' headers read)."""
    in_full = _checked_otherwise(previous, checks)
    refused = []
    for shard in previous.index.shards:
        path = previous.shard_paths.get(shard.sha256)
        if path is None:
            continue  # restoring the layer fails on it, naming the shard
        with ShardColumns(path, shard) as reader:
            ids, lengths, pixels = reader.read("id"), reader.read("length"), pixel_counts(reader)
        rows = set(_check_again(shard, path, caps.max_pixels, in_full)) if in_full or pixels is None else set()
        refused += [int(ids[row]) for row in range(len(ids)) if row in rows or lengths[row] > caps.max_bytes
                    or (pixels is not None and pixels[row] > caps.max_pixels)]
    return refused


def _checked_otherwise(previous: PreviousLayer, checks: dict[str, dict[str, str]]) -> bool:
    """Whether the previous layer's images were checked by other checks than `checks` (or none recorded)."""
    return previous.index.stats.get(CHECKED_BY) != checks


def _check_again(shard: ShardInfo, path: Path, max_pixels: int, in_full: bool) -> list[int]:
    """The rows of a previous shard that today's checks refuse: above `max_pixels` by their headers, not
    readable as an image, or (`in_full`) refused by `check_image` as a download is. Those are checked again
    the way a download is."""
    with ShardColumns(path, shard) as reader:
        blobs = read_blobs(reader, slice(0, shard.n_items))
    refused = []
    for row, data in enumerate(blobs):
        pixels = image_pixels(data)
        if pixels is None or pixels > max_pixels or (in_full and not accepted(data, max_pixels)):
            refused.append(row)
    return refused

