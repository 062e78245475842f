"""The shard store: a content-addressed directory of computed shards (like PAD's `~/.pad_cache`).

A derived shard is addressed by its derivation key — (upstream shard sha256, layer
key, shard format) — and a raw shard by its own sha256. Stages look a shard up
before computing it and put every shard they compute, so stage outputs are built
from the store: DVC's run-cache keeps working (no `persist: true`) and toggling a
param back recomputes nothing.

A store is a cache: when its disk is full it stops caching for the rest of the run with
one warning naming it (`no_space`), and the stage goes on; outputs never depend on it.

Safety: store files are read-only, every reuse re-hashes the bytes against the
recorded sha256 (a damaged entry is dropped and recomputed, never propagated), and
the default `copy` mode gives the workspace its own file, so neither DVC nor a user
editing an output can change the store. `hardlink` saves the space but shares the
inode with the workspace; it is opt-in.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import h5py
from tqdm import tqdm

from evalstack.core.atomic import TEMP_GLOB, atomic_copy, atomic_link, atomic_write_bytes, is_no_space, stale_temp_files
from evalstack.core.hashstamps import HashStamps
from evalstack.core.keys import Key, sha256_bytes, sha256_file
from evalstack.core.layers import SCHEMA_VERSION, ShardInfo, read_attrs
from evalstack.core.names import UnsafeName, check_address, is_address

LINK_MODES = ("copy", "hardlink")
SHARD_KEY_ATTR = "shard_key"  # every derived shard records its own address, so pulled outputs can seed a store
_READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH  # store files: nobody edits a stored result


class ShardStoreError(RuntimeError):
    """The shard store cannot be used as configured."""


@dataclass(frozen=True)
class StoreConfig:
    directory: Path
    max_bytes: int
    link: str = "copy"  # copy | hardlink; see the module docstring

    def __post_init__(self) -> None:
        if self.link not in LINK_MODES:
            raise ShardStoreError(f"store.link {self.link!r} unknown; choose one of {', '.join(LINK_MODES)}")
        if self.max_bytes < 0:
            raise ShardStoreError(f"store.max_bytes must be >= 0, got {self.max_bytes}")


@dataclass(frozen=True)
class StoreEntry:
    address: str
    sha256: str
    size: int
    n_items: int
    kind: str
    layer_key: dict[str, Any] = field(default_factory=dict)  # {"kind", "parts"} it was built with
    upstream: str | None = None


@dataclass(frozen=True)
class GcReport:
    removed: list[StoreEntry]
    kept_bytes: int
    protected_bytes: int
    limit: int

    @property
    def removed_bytes(self) -> int:
        return sum(entry.size for entry in self.removed)


def derivation_key(upstream_sha256: str, layer_key: Key, compression: str, selection: str | None = None) -> Key:
    """The address of a derived shard. The format (schema version, compression) is part of it
    because it shapes the bytes: a shard reused across formats would make outputs depend on history.
    `selection` names the subset of the upstream shard's items used, when not all are."""
    parts = {
        "upstream_sha256": upstream_sha256,
        "layer_key": layer_key.hex,
        "format": {"schema_version": SCHEMA_VERSION, "compression": compression},
    }
    return Key("shard", parts if selection is None else {**parts, "selection": selection})


class ShardStore:
    def __init__(self, config: StoreConfig):
        self.config = config
        self.directory = Path(config.directory)
        self.stamps = HashStamps(self.directory / "stamps")
        self.full = False  # set when a write ran out of space: nothing more is put this run
        self._full_lock = threading.Lock()  # fetch's download threads may all hit the full disk at once

    def no_space(self, error: OSError) -> None:
        """The store's disk is full: stop caching for the rest of this run, and say so once."""
        with self._full_lock:
            first, self.full = not self.full, True
        if first:
            tqdm.write(f"WARNING the shard store {self.directory} is out of disk space ({os.strerror(error.errno)}): "
                       "this run keeps no more shards there. Results are not affected; a later run may recompute "
                       "what was not kept. Free space (`evalstack gc --max-bytes N`) or point store.dir at a larger "
                       "disk; `evalstack doctor` shows free space.", file=sys.stderr)  # on its own line, bars or not

    @contextlib.contextmanager
    def caching(self) -> Iterator[None]:
        """Around a write into the store: a full disk turns caching off instead of failing the stage."""
        try:
            yield
        except OSError as error:
            if not is_no_space(error):
                raise
            self.no_space(error)

    # -- layout ---------------------------------------------------------------------------
    def shard_path(self, address: str) -> Path:
        try:
            check_address(address)  # addresses can come from data (a shard's own attribute, an index)
        except UnsafeName as error:
            raise ShardStoreError(f"{self.directory}: {error}; refusing a path outside the store") from None
        return self.directory / "shards" / address[:2] / f"{address}.h5"

    def record_path(self, address: str) -> Path:
        return self.shard_path(address).with_suffix(".json")

    def build_path(self, layer_dir: Path) -> Path:
        return self.directory / "builds" / f"{sha256_bytes(str(Path(layer_dir).resolve()).encode())[:32]}.json"

    # -- entries --------------------------------------------------------------------------
    def get(self, address: str) -> StoreEntry | None:
        """The entry, when both its record and a file of the recorded size are present."""
        record, shard = self.record_path(address), self.shard_path(address)
        try:
            entry = StoreEntry(**json.loads(record.read_text()))
            # a record names its own address: one that names another (crafted) is no entry of this one
            if entry.address == address and shard.stat().st_size == entry.size:
                return entry
        except (OSError, ValueError, TypeError):
            pass
        return None

    def entries(self) -> Iterator[StoreEntry]:
        for record in sorted((self.directory / "shards").glob("*/*.json")):
            if not is_address(record.stem):  # a stray file in the store is no entry
                continue
            entry = self.get(record.stem)
            if entry is not None:
                yield entry

    def materialise(self, address: str, dest: Path) -> StoreEntry | None:
        """Place the shard at `dest` (atomically) after checking its bytes; None on a miss.

        A damaged entry is removed, so the caller recomputes it.
        """
        entry = self.get(address)
        if entry is None:
            return None
        source = self.shard_path(address)
        digest: str | None
        if self.config.link == "hardlink":
            digest = self.stamps.sha256(source)  # the link will share this inode: hashed once while unchanged
            if digest == entry.sha256 and not atomic_link(source, dest):
                digest = atomic_copy(source, dest, entry.sha256)
        else:
            digest = atomic_copy(source, dest, entry.sha256)
        if digest != entry.sha256:
            self.remove(entry)
            return None
        self.stamps.remember(dest, digest)  # the next stage checks this file before reading it
        with contextlib.suppress(OSError):  # a concurrent gc may have removed it meanwhile
            os.utime(self.record_path(address))  # least recently used is measured on records
        return entry

    def put(self, entry: StoreEntry, source: Path, immutable_source: bool = False) -> None:
        """Record the shard at `source`. An immutable source (DVC's cache) may be hardlinked;
        a workspace file is copied unless the store is in hardlink mode. Nothing when the store is full."""
        if self.full:
            return
        with self.caching():
            self._put(entry, source, immutable_source)

    def _put(self, entry: StoreEntry, source: Path, immutable_source: bool) -> None:
        existing = self.get(entry.address)
        if existing is not None and existing.sha256 == entry.sha256:
            with contextlib.suppress(OSError):
                os.utime(self.record_path(entry.address))
            return
        target = self.shard_path(entry.address)
        target.parent.mkdir(parents=True, exist_ok=True)
        may_link = immutable_source or self.config.link == "hardlink"
        if may_link and atomic_link(source, target):
            os.chmod(target, _READ_ONLY)  # a link shares the source's inode, which the caller vouches for
        elif atomic_copy(source, target, mode=_READ_ONLY) == entry.sha256:
            self.stamps.remember(target, entry.sha256)
        atomic_write_bytes(self.record_path(entry.address), (json.dumps(asdict(entry), sort_keys=True) + "\n").encode())

    def remove(self, entry: StoreEntry) -> None:
        self.record_path(entry.address).unlink(missing_ok=True)  # record first: a lone shard is a miss
        self.shard_path(entry.address).unlink(missing_ok=True)

    def seed(self, shards: Iterable[tuple[ShardInfo, Path]], kind: str, immutable: bool) -> int:
        """Put shards of an existing layer (pulled outputs, DVC's cache) that the store lacks.

        Each shard names its own address in its attributes (raw shards are addressed by
        content); only bytes matching the layer index's sha256 are taken. Returns how many.
        """
        added = 0
        for shard, path in shards:
            try:
                with h5py.File(path, "r") as handle:
                    attrs = read_attrs(handle)
            except OSError:
                continue
            address = attrs.get(SHARD_KEY_ATTR) or shard.sha256
            try:
                check_address(address, f"its {SHARD_KEY_ATTR} attribute")
            except UnsafeName as error:
                raise ShardStoreError(f"{path}: {error}; refusing to seed the store {self.directory} from it "
                                      "(a crafted or damaged shard: `dvc checkout` or rebuild the layer)") from None
            if self.get(address) is not None or self.stamps.sha256(path) != shard.sha256:
                continue
            layer_key = attrs.get("layer_key") if isinstance(attrs.get("layer_key"), dict) else {}
            entry = StoreEntry(address, shard.sha256, path.stat().st_size, shard.n_items, kind, layer_key, shard.upstream)
            self.put(entry, path, immutable_source=immutable)
            added += 1
        return added

    # -- builds (what each layer's last build computed and why) ---------------------------
    def save_build(self, layer_dir: Path, record: dict[str, Any]) -> None:
        path = self.build_path(layer_dir)
        with self.caching():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())

    def load_build(self, layer_dir: Path) -> dict[str, Any] | None:
        try:
            return json.loads(self.build_path(layer_dir).read_text())
        except (OSError, ValueError):
            return None

    # -- size, gc, verify -----------------------------------------------------------------
    def usage(self) -> int:
        return sum(entry.size for entry in self.entries())

    def gc(self, protected_sha256s: set[str], max_bytes: int | None = None, dry_run: bool = False) -> GcReport:
        """Trim to the size limit, least recently used first; never an entry whose bytes are protected."""
        limit = self.config.max_bytes if max_bytes is None else max_bytes
        self._remove_debris(dry_run)
        if not dry_run:
            self.stamps.clear()  # stamps of removed files would only pile up; the rest are re-made on use
        entries = list(self.entries())
        total = sum(entry.size for entry in entries)
        protected = [entry for entry in entries if entry.sha256 in protected_sha256s]
        candidates = sorted(
            (entry for entry in entries if entry.sha256 not in protected_sha256s),
            key=lambda entry: (self.record_path(entry.address).stat().st_mtime_ns, entry.address),
        )
        removed = []
        for entry in candidates:
            if total <= limit:
                break
            if not dry_run:
                self.remove(entry)
            removed.append(entry)
            total -= entry.size
        return GcReport(removed, total, sum(entry.size for entry in protected), limit)

    def _remove_debris(self, dry_run: bool) -> None:
        """Temp files of writers that died (SIGKILL, power loss) and shards without a record."""
        for tmp in stale_temp_files(self.directory / "shards", f"*/{TEMP_GLOB}"):
            if not dry_run:
                tmp.unlink(missing_ok=True)
        for shard in (self.directory / "shards").glob("*/*.h5"):
            # A writer puts the shard, then its record: give a live one time to finish.
            orphan = not shard.with_suffix(".json").exists() and time.time() - shard.stat().st_mtime > 600
            if orphan and not dry_run:
                shard.unlink(missing_ok=True)

    def verify(self) -> list[str]:
        """Entries whose bytes differ from their record (empty = intact)."""
        return [
            f"{self.shard_path(entry.address)}: sha256 differs from its record (damaged store entry)"
            for entry in self.entries()
            if sha256_file(self.shard_path(entry.address)) != entry.sha256
        ]


DEFAULT_STORE = {"dir": ".evalstack/store", "max_bytes": 20_000_000_000, "link": "copy"}


def store_config(params: Mapping[str, Any], root: Path = Path(".")) -> StoreConfig | None:
    """The shard store from `store:` (a relative dir is relative to params.yaml); None when `dir` is empty."""
    section = {**DEFAULT_STORE, **(params.get("store") or {})}
    if not section["dir"]:
        return None
    directory = Path(str(section["dir"])).expanduser()
    return StoreConfig(directory if directory.is_absolute() else root / directory, int(section["max_bytes"]), str(section["link"]))


def open_store(params: Mapping[str, Any], root: Path = Path(".")) -> ShardStore | None:
    config = store_config(params, root)
    return ShardStore(config) if config else None
