"""Checking layers: shards against the index, columns against the schema, items against their checksums.

The index records each shard's sha256 and the layer's column schema; each shard
records a sha256 per item. A whole-file checksum says *that* a shard changed; the
per-item checksums say *which* items are damaged, so a user knows what was lost.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from evalstack.core.keys import sha256_file
from evalstack.core.layers import (
    INDEX_NAME,
    ITEM_KEY,
    SCHEMA_VERSION,
    Layer,
    ShardInfo,
    StoreError,
    describe_shard,
    read_attrs,
    read_column,
    shard_layer_key,
)
from evalstack.core.ragged import CHECKSUM_ALGORITHM, ragged_checksums

_BATCH = 32


@dataclass(frozen=True)
class Problem:
    """One defect, naming the shard file and, when it is about one item, that item."""

    shard: Path
    message: str
    item: str | None = None

    def __str__(self) -> str:
        return f"{self.shard}: {self.item + ': ' if self.item else ''}{self.message}"


def verify_layer(directory: Path | str) -> list[Problem]:
    """Every problem found in a layer (empty = intact). A missing index is one problem."""
    try:
        layer = Layer.open(directory)
    except StoreError as error:
        return [Problem(Path(directory), str(error))]
    except (ValueError, KeyError, TypeError) as error:  # index.json itself damaged
        return [Problem(Path(directory) / INDEX_NAME, f"unreadable index ({type(error).__name__}: {error})")]
    problems: list[Problem] = []
    for shard in layer.shards:
        problems.extend(verify_shard(layer, shard))
    return problems


def verify_shard(layer: Layer, shard: ShardInfo) -> list[Problem]:
    path = layer.path(shard)
    if not path.exists():
        return [Problem(path, "missing (listed in the index)")]
    problems = []
    file_differs = sha256_file(path) != shard.sha256
    if file_differs:
        problems.append(Problem(path, "sha256 differs from the index (corrupt or modified)"))
    try:
        with h5py.File(path, "r") as handle:
            attrs = read_attrs(handle)
            problems.extend(_check_attrs(layer, shard, path, attrs))
            problems.extend(_check_schema(layer, shard, path, handle))
            # the shard's own count: an index that says more would send the item check past the last row
            problems.extend(_check_items(path, handle, int(attrs.get("n_items", shard.n_items))))
    except Exception as error:  # noqa: BLE001 - whatever a damaged file raises is a finding, not a crash
        problems.append(Problem(path, f"unreadable as HDF5 ({type(error).__name__}: {error})"))
        return problems
    if file_differs and len(problems) == 1:
        problems.append(Problem(path, "every item still matches its checksum: the damage is in HDF5 metadata or unused space"))
    return problems


def _check_attrs(layer: Layer, shard: ShardInfo, path: Path, attrs: dict[str, Any]) -> list[Problem]:
    expected = {
        "schema_version": SCHEMA_VERSION,
        "kind": layer.index.kind,
        "upstream_sha256": shard.upstream or "",
        "n_items": shard.n_items,
    }
    problems = [
        Problem(path, f"attribute {name} is {attrs.get(name)!r}, the index says {value!r}")
        for name, value in expected.items()
        if attrs.get(name) != value
    ]
    key = shard_layer_key(attrs)
    if key is None or key.hex != layer.key.hex:
        problems.append(Problem(path, "attribute layer_key differs from the index's key"))
    return problems


def _check_schema(layer: Layer, shard: ShardInfo, path: Path, handle: h5py.File) -> list[Problem]:
    problems = []
    schema = describe_shard(handle)
    recorded = layer.index.schema
    if recorded and schema != recorded:
        for name in sorted(schema.keys() | recorded.keys()):
            if schema.get(name) != recorded.get(name):
                problems.append(Problem(path, f"column {name}: {schema.get(name)} where the index records {recorded.get(name)}"))
    for name in schema:
        if len(handle[name]) != shard.n_items:
            problems.append(Problem(path, f"column {name} has {len(handle[name])} rows, the index says {shard.n_items}"))
    return problems


def _check_items(path: Path, handle: h5py.File, n_items: int) -> list[Problem]:
    attrs = read_attrs(handle)
    spec = attrs.get("item_checksum")
    if not isinstance(spec, dict):
        return []  # a layer kind without per-item checksums is checked per file and schema only
    if spec.get("algorithm") == CHECKSUM_ALGORITHM:
        return _check_ragged_items(path, handle, spec)
    flat = set(attrs.get("flat") or [])
    recorded = handle[spec["column"]][()]
    problems = []
    for row, digest in _item_digests(handle, spec["of"], flat, n_items):
        if digest is None:
            problems.append(Problem(path, "unreadable (its data chunk is damaged)", _item_name(handle, row)))
        elif row < len(recorded) and digest.encode() != bytes(recorded[row]):
            problems.append(Problem(path, f"data does not match its checksum in column {spec['column']}", _item_name(handle, row)))
    return problems


def _check_ragged_items(path: Path, handle: h5py.File, spec: dict[str, Any]) -> list[Problem]:
    """Per-image checksums of a detection layer (flat arrays + one offsets column), all images at once."""
    try:
        offsets = handle[spec["offsets"]][()]
        computed = ragged_checksums(offsets, [handle[name][()] for name in spec["of"]])
        recorded = handle[spec["column"]][()]
    except (OSError, ValueError, KeyError) as error:
        return [Problem(path, f"per-image data unreadable ({type(error).__name__}: {error})")]
    message = f"data does not match its checksum in column {spec['column']}"
    return [Problem(path, message, _item_name(handle, int(row))) for row in np.flatnonzero(computed != recorded)]


def _item_digests(handle: h5py.File, of: list[str], flat: set[str], n_items: int) -> Iterator[tuple[int, str | None]]:
    """(row, sha256) per item; None when the item cannot be read. Batched, row by row only on damage."""
    for start in range(0, n_items, _BATCH):
        stop = min(start + _BATCH, n_items)
        try:
            batch = {name: _read_rows(handle, name, flat, start, stop) for name in of}
        except (OSError, ValueError):
            batch = None
        for row in range(start, stop):
            try:
                values = [batch[name][row - start] for name in of] if batch else [
                    _read_rows(handle, name, flat, row, row + 1)[0] for name in of
                ]
            except (OSError, ValueError):
                yield row, None
                continue
            digest = hashlib.sha256()
            for value in values:
                digest.update(np.ascontiguousarray(value).tobytes())
            yield row, digest.hexdigest()


def _read_rows(handle: h5py.File, name: str, flat: set[str], start: int, stop: int) -> list[Any]:
    if name not in flat:
        return list(handle[name][start:stop])
    offsets, lengths = handle["offset"][start:stop], handle["length"][start:stop]
    data = handle[name]
    return [data[int(o) : int(o) + int(n)] for o, n in zip(offsets, lengths)]


def _item_name(handle: h5py.File, row: int) -> str:
    """`item 3 (id 15589, key 3f2a9c0e71b4)`: row, the source id when the shard has one, the item key."""
    details = []
    for column, label in (("id", "id"), (ITEM_KEY, "key")):
        if column in handle:
            try:
                value = read_column(handle, column, slice(row, row + 1))[0]
            except (OSError, ValueError):
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            details.append(f"{label} {text[:12]}")
    return f"item {row}" + (f" ({', '.join(details)})" if details else "")
