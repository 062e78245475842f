"""What fetch has fetched before, kept outside DVC's outputs so incremental fetch survives DVC.

DVC deletes a stage's outputs before it reruns the stage (and `persist: true` would
switch off its run-cache), so the previous raw layer is usually not in `data/raw`
when fetch starts. It is found, in this order:

1. in the output directory itself (fetch called outside DVC);
2. as `dvc.lock` records it, its files in DVC's cache (a fresh clone that pulled);
3. as fetch last wrote it here: the index is kept under `<store>/fetch/layers/` and
   the raw shards in the shard store, addressed by their own sha256;
4. as another checkout sharing the store (another clone, another path) last wrote its own:
   only to save downloads. It is never put back in this workspace, and what it holds that
   this listing lacks was not removed here.

Images that arrived but are not yet in a recorded shard wait in `<store>/fetch/downloads/`,
so a fetch that failed or was killed never downloads them again. Without a store
(`store.dir: ""`) downloads wait in a temporary directory and only 1–2 apply.
"""
from __future__ import annotations

import contextlib
import hashlib
import secrets
import shutil
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from evalstack.cache.incremental import previous_versions
from evalstack.cache.objectstore import ObjectStoreError, ObjectStoreUnavailable
from evalstack.cache.shardstore import ShardStore, StoreEntry
from evalstack.core.atomic import atomic_copy, atomic_write_bytes, is_no_space, stale_temp_files
from evalstack.core.keys import md5_bytes, sha256_bytes, sha256_file
from evalstack.core.layers import LayerIndex, ShardInfo
from evalstack.fetch.livemarks import LiveMark, sweep_unmarked
from evalstack.sources.registry import RegistryRow

OTHER_CHECKOUT = "another checkout's fetch (shared store)"
REMOTE_LAYERS = "fetch/layers/"  # on a store.url: each checkout's last raw layer index, named as locally


@dataclass(frozen=True)
class PreviousLayer:
    """The last raw layer written for an output path, and where each of its shards' bytes are."""

    index: LayerIndex
    shard_paths: dict[str, Path]  # sha256 → a file that should hold those bytes (checked when copied)
    source: str  # "layer" | "dvc.lock" | "fetch history" | OTHER_CHECKOUT

    @property
    def own(self) -> bool:
        """This output's own last layer. Another checkout's only saves downloads: it is never put back in
        this workspace (offline, or after a failure), and items it has that this listing lacks were not removed here."""
        return self.source != OTHER_CHECKOUT


class RawHistory:
    def __init__(self, store: ShardStore | None, out_dir: Path | None = None):
        self.store = store
        # Downloads of rows the source states no md5 for are this output's own: with a store shared between
        # checkouts, another checkout's copy of a URL may be older than what the URL serves now.
        self._owner = sha256_bytes(str(Path(out_dir).resolve()).encode())[:16] if out_dir is not None else ""
        self._scratch = None if store else tempfile.TemporaryDirectory(prefix="evalstack-fetch-")
        self.directory = store.directory / "fetch" if store else Path(self._scratch.name)
        self._spill: tempfile.TemporaryDirectory | None = None  # downloads, once the store's disk is full
        self._spill_lock = threading.Lock()
        # This fetch's own stash, made when first needed: another checkout sharing the store has its own
        self._stash_dir = self.directory / "stash" / secrets.token_hex(8)
        self._stash_mark: LiveMark | None = None

    def close(self) -> None:
        if self._stash_mark is not None:
            shutil.rmtree(self._stash_dir, ignore_errors=True)
            self._stash_mark.release()
            self._stash_mark = None
        for scratch in (self._scratch, self._spill):
            if scratch is not None:
                scratch.cleanup()

    def __enter__(self) -> "RawHistory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the previous layer ---------------------------------------------------------------
    def previous(self, out_dir: Path, kind: str) -> PreviousLayer | None:
        for index, shards, _, source in previous_versions(Path(out_dir), kind):
            if source == "layer":  # the new layer is written over it: keep its bytes readable elsewhere
                shards = [(shard, self._stash(shard, path)) for shard, path in shards]
            paths = {shard.sha256: path for shard, path in shards if path}
            # shards DVC's cache lacks (a clone that did not pull) may be in the store, addressed by content
            return PreviousLayer(index, {**self._stored_shards(index, skip=set(paths)), **paths}, source)
        if self.store is None:
            return None
        own = self._recorded(self._record_path(out_dir), kind)
        if own is not None:
            return PreviousLayer(own, self._stored_shards(own), "fetch history")
        return self._other_checkout(kind)

    def _recorded(self, path: Path, kind: str) -> LayerIndex | None:
        try:
            return self._parsed(path.read_bytes(), str(path), kind)
        except OSError:
            return None

    @staticmethod
    def _parsed(data: bytes, where: str, kind: str) -> LayerIndex | None:
        try:
            index = LayerIndex.from_json(data.decode(), where)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            return None
        return index if index.kind == kind else None

    def _stored_shards(self, index: LayerIndex, skip: set[str] = frozenset()) -> dict[str, Path]:
        """Where the store holds the layer's shards (fetched from its remote when only there); `skip`: known elsewhere."""
        if self.store is None:
            return {}
        return {s.sha256: self.store.shard_path(s.sha256) for s in index.shards
                if s.sha256 not in skip and self.store.get(s.sha256)}

    def _other_checkout(self, kind: str) -> PreviousLayer | None:
        """The raw layer another checkout sharing this store fetched last (another clone, another path,
        another machine through `store.url`).

        Without it a second clone downloads every item again although the store holds their bytes. Any
        earlier layer is safe to plan from: the plan only saves work (an item is taken from an old shard
        when its id and md5 match, its bytes are checked against the recorded sha256, and the layer is
        cut from the listing alone). The one whose shards are most in the local directory is chosen, then
        the one with most items, then the newest; only its shards are then fetched from a remote.
        """
        best: tuple[int, int, int] | None = None
        chosen: LayerIndex | None = None
        for index, mtime in self._recorded_layers(kind):
            local = sum(self.store.shard_path(s.sha256).exists() for s in index.shards) if self.store else 0
            rank = (local, index.n_items, mtime)
            if best is None or rank > best:
                best, chosen = rank, index
        if chosen is None:
            return None
        stored = self._stored_shards(chosen)
        return PreviousLayer(chosen, stored, OTHER_CHECKOUT) if stored else None

    def _recorded_layers(self, kind: str) -> Iterator[tuple[LayerIndex, int]]:
        """Every raw layer index a checkout recorded: in the local directory, and on the store's remote."""
        for path in (self.directory / "layers").glob("*.json"):
            index = self._recorded(path, kind)
            with contextlib.suppress(OSError):
                if index is not None:
                    yield index, path.stat().st_mtime_ns
        remote = self.store.remote if self.store is not None else None
        if remote is None or remote.down is not None:
            return
        local_names = {path.name for path in (self.directory / "layers").glob("*.json")}
        try:
            for name in remote.list_meta(REMOTE_LAYERS):
                if name.rsplit("/", 1)[-1] in local_names:
                    continue  # the same checkout path recorded here too (this machine's is at least as new)
                data = remote.get_meta(name)
                index = self._parsed(data, f"{remote.url}/meta/{name}", kind) if data else None
                if index is not None:
                    yield index, 0
        except ObjectStoreUnavailable as error:
            self.store.remote_failed(error)
        except ObjectStoreError as error:  # a damaged name or document: only a download saved is lost
            tqdm.write(f"WARNING {error}; fetch plans without other checkouts' layers", file=sys.stderr)

    def _stash(self, shard: ShardInfo, path: Path) -> Path | None:
        if self.store is not None and self.store.get(shard.sha256) is not None:
            return self.store.shard_path(shard.sha256)
        if self._stash_mark is None:
            self._stash_mark = LiveMark(self._stash_dir)
        target = self._stash_dir / f"{shard.sha256}.h5"
        target.parent.mkdir(parents=True, exist_ok=True)
        return target if target.exists() or _copy_checked(path, shard.sha256, target) else None

    def _record_path(self, out_dir: Path) -> Path:
        return self.directory / "layers" / f"{sha256_bytes(str(Path(out_dir).resolve()).encode())[:32]}.json"

    def record(self, out_dir: Path, index: LayerIndex) -> None:
        """Put the layer's shards into the store (raw shards are addressed by content) and note its index."""
        if self.store is None:
            return
        key = {"kind": index.key.kind, "parts": index.key.parts}
        for shard in index.shards:
            path = Path(out_dir) / shard.name
            # Written from checked bytes or placed checked by this fetch, so its sha256 is known: the first stage
            # to read the layer does not hash all of it before it starts (it still reads every shard in full
            # beside its computation, cache/incremental.py's `_UpstreamReads`). ~9 s of 11 GB at 8,001 cards.
            self.store.stamps.remember(path, shard.sha256)
            self.store.put(StoreEntry(shard.sha256, shard.sha256, path.stat().st_size, shard.n_items, index.kind, key),
                           path)
        path = self._record_path(out_dir)
        with self.store.caching():  # a full store only costs the next fetch its history
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, index.to_json().encode())
        self._publish(path.name, index)
        self.store.finish_stage({shard.sha256 for shard in index.shards})

    def _publish(self, name: str, index: LayerIndex) -> None:
        """The index on the store's remote too, so a checkout on another machine can plan from it."""
        remote = self.store.remote if self.store is not None else None
        if remote is None or remote.down is not None:
            return
        try:
            remote.put_meta(f"{REMOTE_LAYERS}{name}", index.to_json().encode())
        except ObjectStoreUnavailable as error:
            self.store.remote_failed(error)

    def place(self, shard: ShardInfo, source: Path | None, dest: Path) -> bool:
        """Put an old shard's bytes at `dest` (atomically, checked against its sha256); False if they cannot be had."""
        if source is not None and source.resolve() == dest.resolve():
            return sha256_file(dest) == shard.sha256  # still in place (fetch run outside DVC)
        entry = self.store.materialise(shard.sha256, dest) if self.store is not None else None
        if entry is not None:
            if entry.sha256 == shard.sha256:  # a raw shard's address is its own sha256
                return True
            dest.unlink(missing_ok=True)  # a record naming other bytes: not this shard
        return source is not None and source.is_file() and _copy_checked(source, shard.sha256, dest)

    # -- downloads awaiting a shard -------------------------------------------------------
    def download_path(self, row: RegistryRow) -> Path:
        identity = repr(row.identity) if row.hashlib_md5 else f"{row.identity!r}@{self._owner}"
        digest = hashlib.sha256(identity.encode()).hexdigest()[:40]
        spilled = self._spill_path(f"{digest}.img")
        return spilled if spilled is not None and spilled.exists() else self.directory / "downloads" / f"{digest}.img"

    def _spill_path(self, name: str) -> Path | None:
        return Path(self._spill.name) / name if self._spill is not None else None

    def load_download(self, row: RegistryRow, check_md5: bool = True) -> bytes | None:
        """The bytes waiting for `row`, or None. `check_md5=False` when they were checked in this run
        (the caller compares their sha256 with the one recorded then)."""
        path = self.download_path(row)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if check_md5 and row.hashlib_md5 and md5_bytes(data) != row.hashlib_md5:
            path.unlink(missing_ok=True)  # damaged on disk: download again
            return None
        return data

    def save_download(self, row: RegistryRow, data: bytes) -> None:
        path = self.download_path(row)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        except OSError as error:
            if self.store is None or not is_no_space(error):
                raise
            # The store's disk is full: keep this download in a temp folder for this run only (as
            # without a store), so the fetch still completes; the store says so once.
            self.store.no_space(error)
            with self._spill_lock:  # download threads arrive here together: one folder for all
                self._spill = self._spill or tempfile.TemporaryDirectory(prefix="evalstack-fetch-")
            path = self._spill_path(path.name)
            atomic_write_bytes(path, data)

    def registry_parses(self) -> Path | None:
        """Where local registries' last parses are kept (sources/registry_prefix.py); None without a store."""
        return self.directory / "registries" if self.store is not None else None

    def work_directory(self) -> Path:
        """Where fetch keeps its scratch listing database (fetch/listing.py; removed when fetch ends)."""
        return self.directory / "work"

    def has_download(self, row: RegistryRow) -> bool:
        return self.download_path(row).exists()

    def drop_downloads(self, rows: Iterable[RegistryRow]) -> None:
        for row in rows:
            self.download_path(row).unlink(missing_ok=True)

    def clear_stale_temp_files(self) -> None:
        """Temp files of a fetch that was killed (SIGKILL leaves them; the rename never happened)."""
        for folder in ("downloads", "work"):  # work/: a mark whose creation failed halfway
            for tmp in stale_temp_files(self.directory / folder):
                tmp.unlink(missing_ok=True)
        # a killed fetch's stash and listing database; a live one's are marked (another checkout's, a long fetch)
        sweep_unmarked(self.directory / "stash", "*")
        sweep_unmarked(self.work_directory(), "listing-*.sqlite")
        for parse in stale_temp_files(self.directory / "registries", "*.tmp"):  # a registry parse not kept
            parse.unlink(missing_ok=True)


def _copy_checked(source: Path, sha256: str, dest: Path) -> bool:
    # not read-only: DVC cache files are, and this copy leaves the cache
    return atomic_copy(source, dest, sha256, mode=stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH) is not None
