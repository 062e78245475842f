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

With `store.url` (an object store, `cache/objectstore.py`) the directory is a read-through
cache in front of it: a local miss asks the remote (record, then the blob, sha256-checked,
into the directory, then placed), every put is uploaded too (blob, then a create-only
record), and at the end of a stage (`finish_stage`) the directory is trimmed to
`store.max_bytes`, least recently used first, keeping what the stage's layers hold. A remote
that stops answering costs one warning naming it: the stage goes on locally with the same
results, and what it computed meanwhile is listed under `pending/` and uploaded by the
next stage that reaches the remote (`store.required: true` makes it an error instead).
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

from evalstack.cache.objectstore import (
    DamagedBlob,
    DamagedRecord,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailable,
    objectstore_config,
)
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
    def __init__(self, config: StoreConfig, remote: ObjectStore | None = None):
        self.config = config
        self.directory = Path(config.directory)
        self.remote = remote
        self.stamps = HashStamps(self.directory / "stamps")
        self.full = False  # set when a write ran out of space: nothing more is put this run
        self._full_lock = threading.Lock()  # fetch's download threads may all hit the full disk at once
        self._remote_lock = threading.Lock()
        self._remote_warned = False  # the remote's failure is said once per run
        self._repair: set[str] = set()  # sha256s whose remote blob was found damaged: the next put re-uploads

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

    # -- the remote (store.url) -------------------------------------------------------------
    def remote_failed(self, error: ObjectStoreError) -> None:
        """The remote stopped answering: an error when it is required, else one warning and local-only."""
        assert self.remote is not None
        if self.remote.config.required:
            raise ShardStoreError(f"{error}; store.required is set, so this stage stops (the shard store's "
                                  "remote must answer). Check the network and store.url/endpointurl") from error
        with self._remote_lock:
            first, self._remote_warned = not self._remote_warned, True
        if first:
            tqdm.write(f"WARNING {error}. This run goes on with the local store {self.directory} only: results "
                       "are the same; shards computed meanwhile are listed under pending/ and uploaded by a later "
                       "run that reaches the store.", file=sys.stderr)

    def _remote_warning(self, message: str) -> None:
        tqdm.write(f"WARNING {message}", file=sys.stderr)

    def _pull(self, address: str) -> StoreEntry | None:
        """A local miss: the remote's record and checked bytes into the directory; None on a miss."""
        if self.remote is None or self.full or self.remote.down is not None and not self.remote.config.required:
            return None
        target = self.shard_path(address)
        try:
            with self.caching():
                entry = self.remote.fetch_shard(address, target)
                if entry is None:
                    return None
                os.chmod(target, _READ_ONLY)
                self.stamps.remember(target, entry.sha256)
                atomic_write_bytes(self.record_path(address), _record_bytes(entry))
                return self._get_local(address)
        except DamagedBlob as error:  # never a wrong shard: a miss, recomputed, then the blob repaired
            self._repair.add(error.entry.sha256)
            self._remote_warning(f"{error}; computing it again (the upload repairs it)")
        except DamagedRecord as error:
            self._remote_warning(f"{error}; computing it again (the upload replaces it)")
        except ObjectStoreUnavailable as error:
            self.remote_failed(error)
        return None

    def _upload(self, entry: StoreEntry, source: Path) -> None:
        """Publish a put shard on the remote; when it cannot be reached, list it as pending."""
        if self.remote is None:
            return
        local = self.shard_path(entry.address)
        path = local if self._get_local(entry.address) == entry else source
        try:
            if self.remote.down is not None:
                raise ObjectStoreUnavailable(f"object store {self.remote.url} is unreachable ({self.remote.down})")
            held = self.remote.put_shard(entry, path, repair=entry.sha256 in self._repair)
        except ObjectStoreUnavailable as error:
            self._mark_pending(entry.address)
            self.remote_failed(error)
            return
        self._repair.discard(entry.sha256)
        if held.sha256 != entry.sha256:
            self._remote_warning(
                f"{self.remote.url}: shard {entry.address[:12]}… was stored by another writer with different bytes "
                f"(sha256 {held.sha256[:12]}…, here {entry.sha256[:12]}…): its compute is not deterministic. "
                "The store keeps the first; this run's output keeps its own bytes.")

    def pending_path(self, address: str) -> Path:
        self.shard_path(address)  # checks the address
        return self.directory / "pending" / address

    def _mark_pending(self, address: str) -> None:
        with self.caching():
            path = self.pending_path(address)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def pending(self) -> list[str]:
        """Addresses put while the remote was unreachable, not uploaded yet."""
        folder = self.directory / "pending"
        return sorted(p.name for p in folder.iterdir() if is_address(p.name)) if folder.is_dir() else []

    def sync(self) -> int:
        """Upload the pending shards (still in the directory); how many went up."""
        if self.remote is None or self.remote.down is not None:
            return 0
        uploaded = 0
        for address in self.pending():
            entry = self._get_local(address)
            if entry is not None:
                try:
                    held = self.remote.put_shard(entry, self.shard_path(address))
                except ObjectStoreUnavailable as error:
                    self.remote_failed(error)
                    return uploaded
                uploaded += held.sha256 == entry.sha256
            else:  # removed from this directory by hand: said, not dropped quietly
                tqdm.write(f"WARNING shard {address[:12]}… was waiting to be uploaded to {self.remote.url} but is no "
                           f"longer in {self.directory}; it is not uploaded (a later run that computes it will)",
                           file=sys.stderr)
            self.pending_path(address).unlink(missing_ok=True)
        return uploaded

    def finish_stage(self, protected_sha256s: set[str]) -> GcReport | None:
        """At the end of a stage with a remote: upload what is pending, then trim the directory (a
        read-through cache) to store.max_bytes, never what the stage's layers hold or what is pending."""
        if self.remote is None:
            return None
        self.sync()
        if not self.directory.is_dir() or self.usage() <= self.config.max_bytes:
            return None
        pending = {entry.sha256 for address in self.pending() if (entry := self._get_local(address)) is not None}
        return self.gc(protected_sha256s | pending, clear_stamps=False)

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
        """The entry, when both its record and a file of the recorded size are present (with a
        remote: after a local miss, downloaded from it, checked)."""
        return self._get_local(address) or self._pull(address)

    def _get_local(self, address: str) -> StoreEntry | None:
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
            entry = self._get_local(record.stem)
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
        try:
            if self.config.link == "hardlink":
                digest = self.stamps.sha256(source)  # the link will share this inode: hashed once while unchanged
                if digest == entry.sha256 and not atomic_link(source, dest):
                    digest = atomic_copy(source, dest, entry.sha256)
            else:
                digest = atomic_copy(source, dest, entry.sha256)
        except FileNotFoundError:
            if source.exists():
                raise
            return None  # removed by another process's trim (a store.dir shared between clones): a miss
        if digest != entry.sha256:
            self.remove(entry)
            # the local copy was damaged: the remote's is checked on download, so one more try cannot loop
            return self.materialise(address, dest) if self._pull(address) is not None else None
        self.stamps.remember(dest, digest)  # the next stage checks this file before reading it
        with contextlib.suppress(OSError):  # a concurrent gc may have removed it meanwhile
            os.utime(self.record_path(address))  # least recently used is measured on records
        return entry

    def put(self, entry: StoreEntry, source: Path, immutable_source: bool = False) -> None:
        """Record the shard at `source`. An immutable source (DVC's cache) may be hardlinked;
        a workspace file is copied unless the store is in hardlink mode. Nothing when the store is full."""
        if not self.full:
            with self.caching():
                self._put(entry, source, immutable_source)
        self._upload(entry, source)  # a full local disk does not stop the upload

    def _put(self, entry: StoreEntry, source: Path, immutable_source: bool) -> None:
        existing = self._get_local(entry.address)
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
        atomic_write_bytes(self.record_path(entry.address), _record_bytes(entry))

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
            if self._get_local(address) is not None or self.stamps.sha256(path) != shard.sha256:
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

    def gc(self, protected_sha256s: set[str], max_bytes: int | None = None, dry_run: bool = False,
           clear_stamps: bool = True) -> GcReport:
        """Trim to the size limit, least recently used first; never an entry whose bytes are protected.
        (Only the local directory: a remote store is shared and is not trimmed from here.)"""
        limit = self.config.max_bytes if max_bytes is None else max_bytes
        # shards waiting to be uploaded exist nowhere else: whoever trims (`evalstack gc` too) keeps them
        protected_sha256s = protected_sha256s | {
            entry.sha256 for address in self.pending() if (entry := self._get_local(address)) is not None}
        self._remove_debris(dry_run)
        if not dry_run and clear_stamps:
            self.stamps.clear()  # stamps of removed files would only pile up; the rest are re-made on use
        # Another process sharing store.dir may be trimming too: an entry it removed meanwhile is left out.
        entries, used = [], {}
        for entry in self.entries():
            if (when := self._last_used(entry)) is not None:
                entries.append(entry)
                used[entry.address] = when
        total = sum(entry.size for entry in entries)
        protected = [entry for entry in entries if entry.sha256 in protected_sha256s]
        candidates = sorted((entry for entry in entries if entry.sha256 not in protected_sha256s),
                            key=lambda entry: (used[entry.address], entry.address))
        removed = []
        for entry in candidates:
            if total <= limit:
                break
            if not dry_run:
                self.remove(entry)
            removed.append(entry)
            total -= entry.size
        return GcReport(removed, total, sum(entry.size for entry in protected), limit)

    def _last_used(self, entry: StoreEntry) -> int | None:
        """When the entry was last used (its record's mtime), or None once another process removed it."""
        try:
            return self.record_path(entry.address).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _remove_debris(self, dry_run: bool) -> None:
        """Temp files of writers that died (SIGKILL, power loss) and shards without a record."""
        for tmp in stale_temp_files(self.directory / "shards", f"*/{TEMP_GLOB}"):
            if not dry_run:
                tmp.unlink(missing_ok=True)
        for shard in (self.directory / "shards").glob("*/*.h5"):
            # A writer puts the shard, then its record: give a live one time to finish. ctime too: a hardlink
            # from DVC's cache keeps the file's old mtime, but linking it updates its ctime.
            try:
                status = shard.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            age = time.time() - max(status.st_mtime, status.st_ctime)
            orphan = not shard.with_suffix(".json").exists() and age > 600
            if orphan and not dry_run:
                shard.unlink(missing_ok=True)

    def verify(self) -> list[str]:
        """Entries whose bytes differ from their record (empty = intact)."""
        return [
            f"{self.shard_path(entry.address)}: sha256 differs from its record (damaged store entry)"
            for entry in self.entries()
            if sha256_file(self.shard_path(entry.address)) != entry.sha256
        ]


def _record_bytes(entry: StoreEntry) -> bytes:
    return (json.dumps(asdict(entry), sort_keys=True) + "\n").encode()


DEFAULT_STORE = {"dir": ".evalstack/store", "max_bytes": 20_000_000_000, "link": "copy", "url": "", "endpointurl": "",
                 "remote": ""}


def store_config(params: Mapping[str, Any], root: Path = Path(".")) -> StoreConfig | None:
    """The shard store from `store:` (a relative dir is relative to params.yaml); None when `dir` is empty."""
    section = {**DEFAULT_STORE, **(params.get("store") or {})}
    if not section["dir"]:
        return None
    directory = Path(str(section["dir"])).expanduser()
    return StoreConfig(directory if directory.is_absolute() else root / directory, int(section["max_bytes"]), str(section["link"]))


def open_store(params: Mapping[str, Any], root: Path = Path(".")) -> ShardStore | None:
    """The shard store of `store:`, with its remote when `store.url` is set (see objectstore.py)."""
    config = store_config(params, root)
    try:
        remote_config = objectstore_config(params, root)
    except ObjectStoreError as error:
        raise ShardStoreError(str(error)) from None
    if remote_config is not None and config is None:
        raise ShardStoreError("store.url needs a store.dir: the local directory is the remote's read-through cache")
    return ShardStore(config, ObjectStore(remote_config) if remote_config else None) if config else None
