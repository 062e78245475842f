"""HDF5 layers: a directory of immutable shards plus a small JSON index.

A layer is what a stage writes (raw, preprocessed, predictions). DVC moves and
caches whole files, so a layer is never one giant file: new items go into new
shards and old shards keep their bytes. Every shard is written deterministically
(no timestamps, fixed ordering) and atomically (temp file in the same directory,
fsync, rename), so identical inputs give identical bytes and a crash never
leaves something that looks like a result.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import h5py
import hdf5plugin
import numpy as np

from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.hashstamps import HashStamps
from evalstack.core.keys import Key, canonical_json, explain_change, sha256_file
from evalstack.core.names import UnsafeName, check_sha256, check_shard_name

SCHEMA_VERSION = 1
INDEX_NAME = "index.json"
SHARD_SUFFIX = ".h5"
ITEM_KEY = "item_key"
CHECKSUM = "checksum"  # per-item sha256 column, so `verify` can name the item that is damaged
COMPRESSIONS = ("none", "lzf", "lz4", "gzip")


class StoreError(RuntimeError):
    """A layer cannot be read or written as asked."""


class CacheStaleError(StoreError):
    """A layer was built from other inputs than the ones expected now."""


class LayerCorruptError(StoreError):
    """A shard's bytes do not match what the index recorded."""


class UnsafeLayerError(StoreError):
    """An index names a shard or digest that would lead outside its layer (core/names.py)."""


@dataclass(frozen=True)
class ShardInfo:
    name: str
    sha256: str
    n_items: int  # rows in the file
    upstream: str | None = None  # sha256 of the shard this one was derived from
    # column → [byte offset, dtype, shape] of every array stored as plain contiguous bytes, so a reader
    # takes them from the file like np.load does, without opening it through HDF5 (see ShardColumns).
    # Recorded when the shard is listed in a layer; None for a shard not listed yet.
    arrays: dict[str, list] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.arrays is None:
            del data["arrays"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ShardInfo":
        """A shard entry of an index, checked: its name and digests are joined to paths later."""
        info = cls(**data)
        check_shard_name(info.name)
        check_sha256(info.sha256, f"sha256 of shard {info.name}")
        if info.upstream is not None:
            check_sha256(info.upstream, f"upstream sha256 of shard {info.name}")
        if not isinstance(info.n_items, int) or info.n_items < 0:
            raise UnsafeName(f"shard {info.name}: n_items {info.n_items!r} is not a row count")
        return info


@dataclass
class LayerIndex:
    kind: str
    key: Key
    shards: list[ShardInfo] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    stats: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, Any] = field(default_factory=dict)  # column → [dtype, per-item shape]

    @property
    def n_items(self) -> int:
        return sum(shard.n_items for shard in self.shards)

    def to_json(self) -> str:
        data = {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "key": {"kind": self.key.kind, "hex": self.key.hex, "parts": self.key.parts},
            "n_items": self.n_items,
            "stats": self.stats,
            "schema": self.schema,
            "shards": [shard.to_dict() for shard in self.shards],
        }
        return json.dumps(json.loads(canonical_json(data)), indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = INDEX_NAME) -> "LayerIndex":
        """Parse an index; `where` names the file in errors. Names in it are checked before any use."""
        data = json.loads(text)
        try:
            shards = [ShardInfo.from_dict(shard) for shard in data["shards"]]
        except UnsafeName as error:
            raise UnsafeLayerError(
                f"{where}: {error}. Refusing this layer (crafted or damaged); restore it with `dvc checkout` "
                "or rebuild it with `dvc repro -f` of the stage that writes it") from None
        names = [shard.name for shard in shards]
        if len(set(names)) != len(names):
            raise UnsafeLayerError(f"{where}: lists a shard name twice; refusing this layer (crafted or damaged)")
        listed = sum(shard.n_items for shard in shards)
        if "n_items" in data and data["n_items"] != listed:
            raise LayerCorruptError(
                f"{where}: says the layer holds {data['n_items']!r} items, its shards list {listed}; refusing this "
                "layer (damaged or edited): restore it with `dvc checkout` or rebuild it with `dvc repro -f` of the "
                "stage that writes it")
        return cls(
            kind=data["kind"],
            key=Key(kind=data["key"]["kind"], parts=data["key"]["parts"]),
            shards=shards,
            schema_version=data["schema_version"],
            stats=data.get("stats", {}),
            schema=data.get("schema", {}),
        )


def compression_options(name: str) -> dict[str, Any]:
    """h5py dataset options for a compression param value."""
    if name == "none":
        return {}
    if name == "lzf":
        return {"compression": "lzf"}
    if name == "lz4":
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4}
    raise StoreError(f"unknown compression {name!r}; choose one of {', '.join(COMPRESSIONS)}")


SMALL_IMAGE = 1 << 20  # bytes: below this a shard is hashed before it is written, not beside


def _is_text(array: np.ndarray) -> bool:
    return array.dtype.kind in ("U", "O")


def write_shard(
    path: Path,
    columns: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    compression: str = "none",
    flat: Mapping[str, np.ndarray] | None = None,
) -> str:
    """Write one shard atomically; return the sha256 of its bytes.

    `columns` have one row per item. `flat` arrays hold ragged per-item data
    (encoded images, detections) addressed by offset columns, which is far faster
    than a group per item. Tensors (columns with more than one dimension) are
    contiguous when uncompressed and one item per chunk when compressed, so either
    way any item is read without touching its neighbours.
    """
    path = Path(path)
    lengths = {name: len(array) for name, array in columns.items()}
    if len(set(lengths.values())) > 1:
        raise StoreError(f"{path.name}: columns differ in length: {lengths}")
    image = _shard_image(columns, attrs, compression_options(compression), flat or {})
    # Hash the bytes in hand while they go to disk: hashlib and fsync both release the GIL,
    # and nothing has to be read back. A small shard is hashed first: starting a thread costs more.
    if len(image) < SMALL_IMAGE:
        digest = hashlib.sha256(image).hexdigest()
        atomic_write_bytes(path, image)
        return digest
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(lambda: hashlib.sha256(image).hexdigest())
        atomic_write_bytes(path, image)
        return digest.result()


def _shard_image(
    columns: Mapping[str, np.ndarray], attrs: Mapping[str, Any], options: dict[str, Any], flat: Mapping[str, np.ndarray]
) -> bytes:
    """The bytes of a shard file, built in memory (HDF5's core driver writes what its file driver would).

    Sizing the in-memory file up front keeps HDF5 from growing it 64 KiB at a time.
    """
    arrays = [np.asarray(a) for a in (*columns.values(), *flat.values())]
    estimate = sum(a.nbytes if a.dtype.kind != "O" else 64 * a.size for a in arrays) + (1 << 20)
    with h5py.File(f"{id(arrays)}.h5", "w", driver="core", backing_store=False, block_size=estimate,
                   track_order=False) as handle:
        for name in sorted(attrs):
            handle.attrs[name] = _attr_value(attrs[name])
        for name in sorted(columns):
            _write_column(handle, name, np.asarray(columns[name]), options)
        for name in sorted(flat):
            handle.create_dataset(name, data=np.asarray(flat[name]))
        handle.flush()
        return handle.id.get_file_image()


def _attr_value(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return canonical_json(value)
    if isinstance(value, Key):
        return value.to_json()
    return value


def _write_column(handle: h5py.File, name: str, array: np.ndarray, options: dict[str, Any]) -> None:
    if _is_text(array):
        handle.create_dataset(name, data=array.astype(object), dtype=h5py.string_dtype("utf-8"))
    elif array.ndim > 1 and len(array) > 0 and options:
        # One item per chunk: any item decompresses without its neighbours.
        handle.create_dataset(name, data=array, chunks=(1, *array.shape[1:]), **options)
    else:
        # Contiguous: rows are plain bytes at a fixed offset, which `read_column` reads like np.load does.
        handle.create_dataset(name, data=array)


def read_attrs(handle: h5py.File) -> dict[str, Any]:
    return {name: _decode_attr(value) for name, value in handle.attrs.items()}


def read_attr(handle: h5py.File, name: str) -> Any:
    """One attribute, decoded as `read_attrs` decodes it (reading them all costs more on hot paths)."""
    return _decode_attr(handle.attrs[name])


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def shard_layer_key(attrs: Mapping[str, Any]) -> Key | None:
    """The layer key a shard records about itself (None when absent or unreadable)."""
    value = attrs.get("layer_key")
    if isinstance(value, dict) and {"kind", "parts"} <= value.keys():
        return Key(kind=value["kind"], parts=value["parts"])
    return None


def read_column(handle: h5py.File, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
    dataset = handle[name]
    direct = _read_contiguous(dataset, rows)
    if direct is not None:
        return direct
    data = dataset[()] if rows is None else dataset[rows]
    if h5py.check_string_dtype(dataset.dtype) is not None:
        return np.asarray([v.decode() if isinstance(v, bytes) else v for v in np.atleast_1d(data)], dtype=object)
    return data


def _read_contiguous(dataset: h5py.Dataset, rows: slice | np.ndarray | None) -> np.ndarray | None:
    """Rows of an uncompressed contiguous numeric dataset read straight from the file (None: not one).

    h5py's hyperslab machinery costs several times a plain read for large tensors; the
    bytes of a contiguous dataset sit at one offset, so one plain read does the job.
    """
    if dataset.ndim < 1 or dataset.chunks is not None or dataset.dtype.kind not in "biuf":
        return None
    offset = dataset.id.get_offset()
    if offset is None or not (rows is None or isinstance(rows, slice)):
        return None
    start, stop, step = (rows or slice(None)).indices(dataset.shape[0])
    if step != 1:
        return None
    shape = (max(stop - start, 0), *dataset.shape[1:])
    count = int(np.prod(shape))
    if count == 0:
        return np.empty(shape, dtype=dataset.dtype)
    row_bytes = int(np.prod(dataset.shape[1:])) * dataset.dtype.itemsize
    # np.fromfile is what np.load reads with; it measured faster here than FileIO.readinto.
    out = np.fromfile(dataset.file.filename, dtype=dataset.dtype, count=count, offset=offset + start * row_bytes)
    if out.size != count:
        raise LayerCorruptError(f"{dataset.file.filename}: {dataset.name} is shorter than its header says")
    return out.reshape(shape)


DIRECT_KINDS = "biufS"  # numbers and fixed-width bytes: what a plain read of the file's bytes returns as is


def contiguous_arrays(handle: h5py.File) -> dict[str, list]:
    """{column: [byte offset, dtype, shape]} of every dataset stored as plain contiguous bytes.

    These are the arrays `ShardColumns` reads without HDF5; compressed or chunked datasets
    and variable-length strings are left to h5py.
    """
    arrays = {}
    for name, dataset in handle.items():
        if not isinstance(dataset, h5py.Dataset) or dataset.ndim < 1 or dataset.chunks is not None:
            continue
        if dataset.dtype.kind not in DIRECT_KINDS:  # variable-length strings are objects ("O")
            continue
        offset = dataset.id.get_offset()
        if offset is None and dataset.size:  # no storage allocated while it has elements: not plain bytes
            continue
        arrays[name] = [int(offset or 0), dataset.dtype.str, list(dataset.shape)]
    return arrays


def read_array(path: Path, location: Sequence[Any], rows: slice | None = None, what: str = "") -> np.ndarray:
    """Rows of an array the layer index locates in a shard file ([offset, dtype, shape]), read with
    np.fromfile as np.load reads: no HDF5 on the way. The caller has checked the file's sha256."""
    offset, dtype, shape = int(location[0]), np.dtype(location[1]), tuple(int(n) for n in location[2])
    if dtype.kind not in DIRECT_KINDS or not shape:
        raise LayerCorruptError(f"{path}: {what or 'an array'} is recorded with dtype {dtype.str} and shape {shape}, "
                                "which is not a plain array")
    start, stop, step = (rows or slice(None)).indices(shape[0])
    if step != 1:
        raise ValueError("read_array reads contiguous rows only (step 1)")
    out_shape = (max(stop - start, 0), *shape[1:])
    count = int(np.prod(out_shape))
    if count == 0:
        return np.empty(out_shape, dtype=dtype)
    row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
    out = np.fromfile(path, dtype=dtype, count=count, offset=offset + start * row_bytes)
    if out.size != count:
        raise LayerCorruptError(f"{path}: {what or 'an array'} is shorter than the layer index says")
    return out.reshape(out_shape)


class ShardColumns:
    """Reads the columns of one shard file: arrays its ShardInfo locates straight from the file,
    anything else (strings, compressed tensors, an older index) through h5py, opened only then.

    Opening an HDF5 file costs about as much as reading a 19 MB tensor column from the page
    cache (bench P5), so readers that need only numbers never pay it.
    """

    def __init__(self, path: Path, shard: ShardInfo):
        self.path = Path(path)
        self.arrays = shard.arrays or {}
        self._handle: h5py.File | None = None

    def read(self, name: str, rows: slice | np.ndarray | None = None, decode: bool = True) -> np.ndarray:
        """A column (or `rows` of it) as `read_column` returns it; `decode=False` keeps fixed-width strings
        as bytes (item keys passed on to a derived shard keep their fixed width)."""
        location = self.arrays.get(name)
        if location is None or not (rows is None or isinstance(rows, slice) and rows.step in (None, 1)):
            if not decode and self.handle[name].dtype.kind == "S":
                dataset = self.handle[name]
                return dataset[()] if rows is None else dataset[rows]
            return read_column(self.handle, name, rows)
        array = read_array(self.path, location, rows, name)
        if array.dtype.kind == "S" and decode:  # as read_column returns fixed-width strings: decoded, one object each
            return np.asarray([value.decode() for value in array], dtype=object)
        return array

    @property
    def handle(self) -> h5py.File:
        if self._handle is None:
            self._handle = h5py.File(self.path, "r")
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "ShardColumns":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def item_digests(
    columns: Mapping[str, np.ndarray], of: Sequence[str], flat: Mapping[str, np.ndarray] | None = None
) -> np.ndarray:
    """sha256 per item over the bytes of the `of` columns (a flat column via `offset`/`length`)."""
    flat = flat or {}
    n_items = len(next(iter(columns.values()))) if columns else 0
    digests = []
    for row in range(n_items):
        digest = hashlib.sha256()
        for name in of:
            if name in flat:
                start = int(columns["offset"][row])
                digest.update(np.asarray(flat[name][start : start + int(columns["length"][row])]).tobytes())
            else:
                digest.update(np.ascontiguousarray(columns[name][row]).tobytes())
        digests.append(digest.hexdigest())
    return np.asarray(digests, dtype="S64")


def describe_shard(handle: h5py.File) -> dict[str, Any]:
    """The per-item columns of a shard as {name: [dtype, per-item shape]} (flat arrays left out)."""
    flat = set(_decode_attr(handle.attrs.get("flat", "[]")))
    schema = {}
    for name, dataset in handle.items():
        if name in flat:
            continue
        dtype = "str" if h5py.check_string_dtype(dataset.dtype) is not None else dataset.dtype.str
        schema[name] = [dtype, list(dataset.shape[1:])]
    return schema


def write_layer_shard(
    path: Path,
    kind: str,
    key: Key,
    compression: str,
    columns: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    upstream: str | None = None,
    flat: Mapping[str, np.ndarray] | None = None,
    checksum_of: Sequence[str] = (),
    checksum_column: str = CHECKSUM,
) -> ShardInfo:
    """Write one shard of a layer (kind, key) without a LayerWriter, e.g. on a Dask worker.

    `checksum_of` names the per-item columns `verify` re-hashes per item; their digests
    go into `checksum_column` (computed here unless the caller supplies it).
    """
    columns = dict(columns)
    n_items = len(next(iter(columns.values()))) if columns else 0
    shard_attrs: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "layer_key": key.to_json(),
        "upstream_sha256": upstream or "",
        "n_items": n_items,
        "flat": sorted(flat or {}),
        **(attrs or {}),
    }
    if checksum_of:
        shard_attrs["item_checksum"] = {"column": checksum_column, "of": list(checksum_of)}
        if checksum_column not in columns:
            columns[checksum_column] = item_digests(columns, checksum_of, flat)
    digest = write_shard(Path(path), columns, shard_attrs, compression, flat)
    return ShardInfo(name=Path(path).name, sha256=digest, n_items=n_items, upstream=upstream)


class LayerWriter:
    """Builds a layer shard by shard in a staging directory beside `directory`; `finish()` writes the
    index last and then puts the new layer in place of the old one.

    Until `finish()` the old layer (if any) stays in place and valid, and the staging directory is not a
    layer (no index), so neither a reader nor a crash ever sees half a layer as a result.
    """

    def __init__(self, directory: Path, kind: str, key: Key, compression: str = "none"):
        self.directory = Path(directory)
        self.kind = kind
        self.key = key
        self.compression = compression
        compression_options(compression)  # fail early on a bad param
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.parent.glob(f".{self.directory.name}.staging-*"):  # a crashed writer's
            shutil.rmtree(stale, ignore_errors=True)
        self.staging = self.directory.with_name(f".{self.directory.name}.staging-{secrets.token_hex(6)}")
        self.staging.mkdir()
        self.shards: list[ShardInfo] = []
        self.stats: dict[str, Any] = {}
        self.schema: dict[str, Any] | None = None

    def path(self, name: str) -> Path:
        """Where a shard of the layer being built is placed (published by `finish()`)."""
        return self.staging / name

    def add_shard(self, name: str, columns: Mapping[str, np.ndarray], **options: Any) -> ShardInfo:
        """Write a shard and list it in this layer; `options` are `write_layer_shard`'s
        (attrs, upstream, flat, checksum_of, checksum_column)."""
        info = write_layer_shard(self.path(name), self.kind, self.key, self.compression, columns, **options)
        return self._register(info)

    def add_existing(self, name: str, sha256: str, upstream: str | None = None) -> ShardInfo:
        """List a shard that was placed in the directory already (e.g. copied from the shard store).

        Its own attributes must say it belongs here, so a mislabelled file is refused, not listed.
        """
        path = self.path(name)
        with h5py.File(path, "r") as handle:
            attrs = read_attrs(handle)
        differs = [
            name
            for name, ok in (
                ("kind", attrs.get("kind") == self.kind),
                ("layer_key", getattr(shard_layer_key(attrs), "hex", None) == self.key.hex),
                ("upstream_sha256", attrs.get("upstream_sha256") == (upstream or "")),
            )
            if not ok
        ]
        if differs:
            raise StoreError(f"{path}: its attributes ({', '.join(differs)}) do not belong to this layer")
        info = ShardInfo(name=name, sha256=sha256, n_items=int(attrs["n_items"]), upstream=upstream)
        return self._register(info)

    def _register(self, info: ShardInfo) -> ShardInfo:
        with h5py.File(self.path(info.name), "r") as handle:
            schema = describe_shard(handle)
            info = replace(info, arrays=contiguous_arrays(handle))
        if self.schema is None:
            self.schema = schema
        elif schema != self.schema:
            raise StoreError(f"{self.path(info.name)}: columns {schema} differ from the layer's {self.schema}")
        self.shards.append(info)
        return info

    def finish(self) -> LayerIndex:
        listed = {shard.name for shard in self.shards}
        for leftover in self.staging.glob(f"*{SHARD_SUFFIX}"):
            if leftover.name not in listed:
                leftover.unlink()
        index = LayerIndex(
            kind=self.kind, key=self.key, shards=list(self.shards), stats=self.stats, schema=self.schema or {}
        )
        atomic_write_bytes(self.staging / INDEX_NAME, index.to_json().encode())
        self._publish()
        return index

    def _publish(self) -> None:
        """The staging directory becomes `directory`: two renames, the old layer removed after."""
        retired = None
        if self.directory.exists() or self.directory.is_symlink():
            retired = self.directory.with_name(f".{self.directory.name}.old-{secrets.token_hex(6)}")
            os.rename(self.directory, retired)
        os.rename(self.staging, self.directory)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True) if retired.is_dir() and not retired.is_symlink() \
                else retired.unlink()


def repair_hint(directory: Path) -> str:
    """What restores a damaged layer. Plain `dvc checkout` does not when the damage kept the file's size and
    mtime (it trusts its stat cache); `--relink` rewrites the files from DVC's cache, and `--force` is needed
    when the damage did move the mtime (dvc then refuses to overwrite "unsaved" changes). Both cases checked
    on the real CLI (dvc 3.67); `dvc checkout --force` alone restores only the second."""
    return (f"`dvc checkout --relink --force {directory}` restores it from DVC's cache (plain `dvc checkout` trusts "
            "the file's unchanged size and mtime and leaves it), or `dvc repro -f` the stage that writes it")


def shard_name(number: int) -> str:
    return f"{number:05d}{SHARD_SUFFIX}"


class Layer:
    """Read access to a finished layer directory."""

    def __init__(self, directory: Path, index: LayerIndex):
        self.directory = Path(directory)
        self.index = index

    @classmethod
    def open(cls, directory: Path | str, kind: str | None = None) -> "Layer":
        directory = Path(directory)
        index_path = directory / INDEX_NAME
        if not index_path.exists():
            raise StoreError(
                f"{directory} is not a finished layer (no {INDEX_NAME}); "
                "run the stage that produces it (`dvc repro`) or `dvc pull` it"
            )
        index = LayerIndex.from_json(index_path.read_text(), str(index_path))
        if index.schema_version != SCHEMA_VERSION:
            raise CacheStaleError(
                f"{directory} has schema version {index.schema_version}, this evalstack reads "
                f"{SCHEMA_VERSION}; rebuild it with `dvc repro -f` on the stage that writes it"
            )
        if kind is not None and index.kind != kind:
            raise StoreError(f"{directory} is a {index.kind} layer, expected a {kind} layer")
        return cls(directory, index)

    @property
    def key(self) -> Key:
        return self.index.key

    @property
    def shards(self) -> list[ShardInfo]:
        return self.index.shards

    def __len__(self) -> int:
        return self.index.n_items

    def path(self, shard: ShardInfo) -> Path:
        return self.directory / shard.name

    def expect_key(self, expected: Key, rebuild_hint: str) -> None:
        """Raise CacheStaleError naming what differs when the layer was built from other inputs."""
        if self.key.hex == expected.hex:
            return
        changes = explain_change(self.key.parts, expected.parts) or ["key kind or hashing changed"]
        raise CacheStaleError(
            f"{self.directory} is stale: it was built with a different {expected.kind}:\n  "
            + "\n  ".join(changes)
            + f"\nRebuild it with `{rebuild_hint}`."
        )

    def open_shard(self, shard: ShardInfo) -> h5py.File:
        path = self.path(shard)
        if not path.exists():
            raise StoreError(f"{path} is listed in the index but missing; `dvc pull` or `dvc repro` it")
        return h5py.File(path, "r")

    def columns(self, shard: ShardInfo) -> ShardColumns:
        """A reader of one shard's columns (see ShardColumns); use it as a context manager."""
        path = self.path(shard)
        if not path.exists():
            raise StoreError(f"{path} is listed in the index but missing; `dvc pull` or `dvc repro` it")
        return ShardColumns(path, shard)

    def column(self, name: str) -> np.ndarray:
        """One column over every shard, concatenated (for small per-item columns)."""
        parts = []
        for shard in self.shards:
            with self.columns(shard) as reader:
                parts.append(reader.read(name))
        if not parts:
            return np.asarray([])
        return np.concatenate(parts)

    def item_keys(self) -> np.ndarray:
        return self.column(ITEM_KEY).astype(str)

    def iter_batches(self, names: Sequence[str], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Stream columns in batches, shard by shard, so memory stays flat."""
        for shard in self.shards:
            with self.columns(shard) as reader:
                for start in range(0, shard.n_items, batch_size):
                    rows = slice(start, min(start + batch_size, shard.n_items))
                    yield {name: reader.read(name, rows) for name in names}

    def check_shard(self, shard: ShardInfo, sha256: Callable[[Path], str] = sha256_file,
                    item_count: Callable[[Path], int | None] | None = None) -> Path:
        """The shard's path once its bytes match the index; LayerCorruptError otherwise.

        Stages call this on every upstream shard before use, so a damaged input is
        refused instead of silently turned into wrong results. `sha256` may remember
        hashes of unchanged files (the store's `HashStamps`), and `item_count` the count
        each file's header records (`remembered_checks` gives both).
        """
        path = self.path(shard)
        if not path.exists():
            raise StoreError(f"{path} is listed in the index but missing; `dvc pull` or `dvc repro` it")
        if sha256(path) != shard.sha256:
            raise LayerCorruptError(
                f"{path} does not match the sha256 recorded in {self.directory / INDEX_NAME} (corrupt or "
                f"modified); `evalstack verify {self.directory}` names the damaged items. {repair_hint(self.directory)}"
            )
        check_item_count(path, shard, self.directory / INDEX_NAME, (item_count or read_item_count)(path))
        return path


def remembered_checks(stamps: HashStamps | None) -> dict[str, Callable[[Path], Any]]:
    """`check_shard`'s keyword arguments that take a file's sha256 and item count from `stamps` while its
    stat is unchanged (nothing remembered without stamps)."""
    if stamps is None:
        return {}
    return {"sha256": stamps.sha256, "item_count": lambda path: stamps.fact(path, "n_items", read_item_count)}


def read_item_count(path: Path) -> int | None:
    """The item count a shard file's header records (None when it records none)."""
    with h5py.File(path, "r") as handle:
        recorded = handle.attrs.get("n_items")
    return None if recorded is None else int(recorded)


def check_item_count(path: Path, shard: ShardInfo, index_path: Path, recorded: int | None) -> None:
    """The index's row count for a shard is what the shard (its bytes already checked) says it holds: the
    index records the shard's sha256, not its own, so an edited count would otherwise pass every check
    and make readers skip rows or index past the end."""
    if recorded is None or recorded != shard.n_items:
        raise LayerCorruptError(
            f"{index_path} says {shard.name} holds {shard.n_items} items, the shard itself holds {recorded}; the "
            f"index is damaged or edited. {repair_hint(index_path.parent)}")


def remove_other_layers(parent: Path, keep: set[str]) -> None:
    """Layers under `parent` whose names are not in `keep` (grid cells dropped from the params while
    running outside DVC, which would have removed the output itself)."""
    for child in Path(parent).iterdir():
        if child.is_dir() and child.name not in keep and (child / INDEX_NAME).exists():
            shutil.rmtree(child)
