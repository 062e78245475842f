"""The shard store on its own: entries, least-recently-used gc, debris from killed writers."""
import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from evalstack.cache.shardstore import ShardStoreError, StoreConfig, StoreEntry, store_config
from tests.layers import store_at


def _put(store, tmp_path: Path, name: str, size: int = 1000) -> StoreEntry:
    source = tmp_path / f"{name}.bin"
    source.write_bytes(name.encode() * (size // len(name)))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    entry = StoreEntry(address=hashlib.sha256(name.encode()).hexdigest(), sha256=digest,
                       size=source.stat().st_size, n_items=1, kind="preprocessed")
    store.put(entry, source)
    return entry


def _age(store, entry: StoreEntry, seconds_ago: float) -> None:
    stamp = time.time() - seconds_ago
    os.utime(store.record_path(entry.address), (stamp, stamp))


def test_entries_are_read_only_copies(tmp_path: Path):
    store = store_at(tmp_path / "store")
    entry = _put(store, tmp_path, "a")
    path = store.shard_path(entry.address)
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert path.stat().st_nlink == 1  # copy mode: the source file does not share the inode
    assert store.get(entry.address) == entry
    assert store.materialise(entry.address, tmp_path / "out.bin") == entry
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "a.bin").read_bytes()


def test_gc_removes_least_recently_used_first_and_keeps_protected(tmp_path: Path):
    store = store_at(tmp_path / "store", max_bytes=2500)
    old, used, protected, new = (_put(store, tmp_path, name) for name in ("old", "used", "protected", "new"))
    for entry, age in ((old, 400), (used, 300), (protected, 500), (new, 100)):
        _age(store, entry, age)
    store.materialise(used.address, tmp_path / "x.bin")  # a reuse makes it the most recently used
    report = store.gc({protected.sha256}, dry_run=True)
    assert [e.address for e in report.removed] == [old.address, new.address]
    assert store.get(old.address) is not None  # dry run
    report = store.gc({protected.sha256})
    assert report.kept_bytes <= 2500 and report.protected_bytes == protected.size
    assert {e.address for e in store.entries()} == {used.address, protected.address}


def test_gc_never_goes_below_what_is_protected(tmp_path: Path):
    store = store_at(tmp_path / "store", max_bytes=0)
    keep = _put(store, tmp_path, "keep")
    report = store.gc({keep.sha256})
    assert report.removed == [] and report.kept_bytes == keep.size > report.limit


def test_gc_clears_temp_files_by_age_not_by_pid(tmp_path: Path):
    # On a shared store.dir a pid may belong to another host: a temp file is stale when it is old.
    store = store_at(tmp_path / "store")
    entry = _put(store, tmp_path, "a")
    folder = store.shard_path(entry.address).parent
    stale, live = folder / ".x.h5.0f3a9c.tmp", folder / ".y.h5.77b1e2.tmp"
    stale.write_bytes(b"half"), live.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    store.gc(set())
    assert not stale.exists() and live.exists()


def test_store_config_from_params(tmp_path: Path):
    config = store_config({"store": {"dir": "cache/shards", "max_bytes": 5, "link": "hardlink"}}, tmp_path)
    assert config == StoreConfig(tmp_path / "cache/shards", 5, "hardlink")
    assert store_config({"store": {"dir": ""}}) is None
    assert store_config({}, tmp_path).directory == tmp_path / ".evalstack/store"
    with pytest.raises(ShardStoreError, match="store.link 'symlink' unknown"):
        store_config({"store": {"link": "symlink"}})


def test_another_process_trimming_the_same_store_is_no_error(tmp_path: Path, monkeypatch):
    # Found with two clones sharing one store.dir (README "Share shards by key"): each stage end trims the store, so
    # an entry one process listed can be gone when it sorts or copies it. A gone entry is a miss, never a crash.
    store = store_at(tmp_path / "store", max_bytes=1500)
    first, second, third = (_put(store, tmp_path, name) for name in ("first", "second", "third"))
    listed = type(store).entries

    def trimmed_meanwhile(self):
        for entry in listed(self):
            if entry.address == first.address:  # the other process removes it right after this one read it
                self.remove(entry)
            yield entry

    monkeypatch.setattr(type(store), "entries", trimmed_meanwhile)
    report = store.gc(set())
    assert first not in report.removed and report.kept_bytes <= 1500
    monkeypatch.undo()
    kept = next(iter(store.entries()))
    found = type(store).get

    def removed_after_the_lookup(self, address):
        entry = found(self, address)
        self.shard_path(address).unlink()  # the other process's trim, between lookup and copy
        return entry

    monkeypatch.setattr(type(store), "get", removed_after_the_lookup)
    assert store.materialise(kept.address, tmp_path / "out.bin") is None and not (tmp_path / "out.bin").exists()
    assert {second.address, third.address} >= {kept.address}
