"""The fetch stage: registry rows → the raw layer (encoded image bytes + metadata).

The item key is the sha256 of the image bytes; the md5 the source states is
checked, never trusted as a key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
from tqdm import tqdm

from evalstack.incremental import BuildLog, start_build
from evalstack.keys import Key, md5_bytes, sha256_bytes
from evalstack.shardstore import ShardStore, StoreEntry
from evalstack.sources import (
    DEFAULT_MAX_PIXELS,
    RegistryRow,
    SourceError,
    check_image,
    check_scheme,
    check_unique_ids,
    parse_registry,
    read_local,
    to_url,
)
from evalstack.store import ITEM_KEY, LayerIndex, LayerWriter, shard_name

RAW_KIND = "raw"
META_COLUMNS = ("id", "sample_id", "sample_name", "quantity", "camera_type_1", "url", "hashlib_md5", "image_name", "split")


@dataclass(frozen=True)
class FetchConfig:
    registries: Mapping[str, str]  # split name → registry location (path or URL)
    shard_size: int = 256
    max_pixels: int = DEFAULT_MAX_PIXELS
    allowed_schemes: tuple[str, ...] = ("file",)

    def layer_key(self) -> Key:
        # Shard size shapes the files, not the items, but DVC compares files, so it is recorded.
        return Key("raw", {"registries": dict(self.registries), "shard_size": self.shard_size})


@dataclass
class FetchedItem:
    row: RegistryRow
    data: bytes


def read_registries(config: FetchConfig) -> list[RegistryRow]:
    rows: list[RegistryRow] = []
    for split in sorted(config.registries):
        url = to_url(config.registries[split])
        check_scheme(url, config.allowed_schemes)
        text = read_local(url).decode("utf-8-sig")
        rows.extend(parse_registry(text, split, url))
    check_unique_ids(rows)
    # Arrival order: PAD ids grow as cards are uploaded, so new cards land in new shards.
    return sorted(rows, key=lambda row: row.id)


def download_item(row: RegistryRow, config: FetchConfig) -> FetchedItem:
    what = f"item id {row.id} ({row.image_name})"
    check_scheme(row.resolved_url, config.allowed_schemes)
    data = read_local(row.resolved_url)
    actual = md5_bytes(data)
    if actual != row.hashlib_md5:
        raise SourceError(f"{what}: md5 {actual} differs from the registry's {row.hashlib_md5}")
    check_image(data, config.max_pixels, what)
    return FetchedItem(row=row, data=data)


def raw_columns(items: list[FetchedItem]) -> dict[str, np.ndarray]:
    """Metadata table + one flat byte array with offsets (no group per item)."""
    lengths = np.asarray([len(item.data) for item in items], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if items else lengths
    columns: dict[str, np.ndarray] = {
        ITEM_KEY: np.asarray([sha256_bytes(item.data) for item in items], dtype="S64"),
        "blob": np.frombuffer(b"".join(item.data for item in items), dtype=np.uint8),  # flat, see store
        "offset": offsets,
        "length": lengths,
    }
    for name in META_COLUMNS:
        values = [getattr(item.row, name) for item in items]
        is_int = name in ("id", "sample_id", "quantity")
        columns[name] = np.asarray(values, dtype=np.int64 if is_int else object)
    return columns


def _batched(rows: Iterable[RegistryRow], size: int) -> Iterator[list[RegistryRow]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def fetch_raw_layer(config: FetchConfig, out_dir: Path, store: ShardStore | None = None) -> LayerIndex:
    """Rows in id order, `shard_size` per shard. Shards go into the store by their own sha256
    (a raw shard has no upstream to derive an address from)."""
    rows = read_registries(config)
    key = config.layer_key()
    previous, seeded = start_build(store, out_dir, RAW_KIND)
    log = BuildLog(RAW_KIND, key, "fetch", {"": "fetch"}, "items_fetched", previous)
    log.seeded = seeded
    writer = LayerWriter(out_dir, RAW_KIND, key)
    with tqdm(total=len(rows), desc="fetch", unit="card") as progress:
        for number, chunk in enumerate(_batched(rows, config.shard_size)):
            items = []
            for row in chunk:
                items.append(download_item(row, config))
                progress.update()
            columns = raw_columns(items)
            flat = {"blob": columns.pop("blob")}
            # The item key is the sha256 of the image bytes, so it doubles as the per-item checksum.
            info = writer.add_shard(shard_name(number), columns, flat=flat, checksum_of=("blob",), checksum_column=ITEM_KEY)
            if store is not None:
                path = writer.directory / info.name
                store.put(StoreEntry(info.sha256, info.sha256, path.stat().st_size, info.n_items, RAW_KIND,
                                     {"kind": key.kind, "parts": key.parts}), path)
            log.add(info, None, computed=True)
    writer.stats = {"items": len(rows)}
    index = writer.finish()
    log.finish(out_dir, store)
    return index


def read_blobs(handle, rows: slice) -> list[bytes]:
    """Encoded image bytes of the given rows of an open raw shard."""
    offsets = handle["offset"][rows]
    lengths = handle["length"][rows]
    if len(offsets) == 0:
        return []
    start, stop = int(offsets[0]), int(offsets[-1] + lengths[-1])
    span = handle["blob"][start:stop].tobytes()
    return [span[o - start : o - start + n] for o, n in zip(offsets.tolist(), lengths.tolist())]
