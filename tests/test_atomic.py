"""The one atomic-write helper: unpredictable exclusive temp names, no symlink followed, stale by age,
and a full disk named with the space needed.

Issue 15, finding 6: at a9ba955 the temp name was `.name.<pid>.tmp`; a symlink planted there (in a
shared store.dir) made a write overwrite the link's target and left the output a symlink, and
`gc` judged temp files by a pid that may belong to another host.
"""
from __future__ import annotations

import errno
import itertools
import os
import time
from pathlib import Path

import pytest

from evalstack.core import atomic
from evalstack.core.atomic import atomic_copy, atomic_write_bytes, stale_temp_files
from evalstack.core.keys import sha256_file
from tests.layers import store_at


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_bytes(b"precious")
    return path


def test_a_symlink_at_the_old_predictable_temp_name_does_not_redirect_a_write(tmp_path: Path, victim: Path):
    out = tmp_path / "shared" / "00000.h5"
    out.parent.mkdir()
    planted = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # what a9ba955 would have opened
    planted.symlink_to(victim)
    atomic_write_bytes(out, b"result")
    assert victim.read_bytes() == b"precious"
    assert out.read_bytes() == b"result" and not out.is_symlink()
    assert planted.is_symlink()  # left alone: not ours


def test_a_symlink_at_the_random_temp_name_is_never_opened(tmp_path: Path, victim: Path, monkeypatch):
    names = iter(["0123456789abcdef", "fedcba9876543210"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(names))  # as if an attacker guessed it
    out = tmp_path / "00000.h5"
    planted = tmp_path / ".00000.h5.0123456789abcdef.tmp"
    planted.symlink_to(victim)
    atomic_write_bytes(out, b"result")
    assert victim.read_bytes() == b"precious"
    assert out.read_bytes() == b"result" and not out.is_symlink() and planted.is_symlink()


def test_a_symlink_at_the_output_name_is_replaced_not_followed(tmp_path: Path, victim: Path):
    out = tmp_path / "index.json"
    out.symlink_to(victim)
    atomic_write_bytes(out, b"{}")
    assert victim.read_bytes() == b"precious" and not out.is_symlink() and out.read_bytes() == b"{}"


def test_temp_names_are_unpredictable(tmp_path: Path):
    names = {atomic.temp_path(tmp_path / "x.h5").name for _ in range(50)}
    assert len(names) == 50 and all(name.startswith(".x.h5.") and name.endswith(".tmp") for name in names)
    assert not any(f".{os.getpid()}.tmp" in name for name in names)


def test_a_store_put_next_to_a_planted_link_writes_only_the_store(tmp_path: Path, victim: Path, monkeypatch):
    from evalstack.cache.shardstore import StoreEntry

    names = itertools.chain(["a" * 16], iter(lambda: os.urandom(8).hex(), None))  # the first one was guessed
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(names))
    store = store_at(tmp_path / "store")
    source = tmp_path / "shard.h5"
    source.write_bytes(b"shard bytes")
    address = "ab" * 32
    target = store.shard_path(address)
    target.parent.mkdir(parents=True)
    (target.parent / f".{target.name}.{'a' * 16}.tmp").symlink_to(victim)
    store.put(StoreEntry(address, sha256_file(source), source.stat().st_size, 1, "raw"), source)
    assert victim.read_bytes() == b"precious"
    assert target.read_bytes() == b"shard bytes" and not target.is_symlink()


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path: Path):
    out = tmp_path / "report.json"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_writer(out) as handle:
            handle.write(b"half")
            raise RuntimeError("crash")
    assert out.read_bytes() == b"old" and list(tmp_path.iterdir()) == [out]


# -- gc's stale rule is by age --------------------------------------------------------------------
def test_stale_temp_files_are_judged_by_age_not_by_a_pid(tmp_path: Path):
    dead_pid_fresh = tmp_path / f".a.h5.{2 ** 22 + 12345}.tmp"  # old naming, a pid no process here has
    live_pid_old = tmp_path / f".b.h5.{os.getpid()}.tmp"  # this process's pid, but untouched for 2 hours
    random_fresh = atomic.temp_path(tmp_path / "c.h5")
    for path in (dead_pid_fresh, live_pid_old, random_fresh):
        path.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(live_pid_old, (two_hours_ago, two_hours_ago))
    assert stale_temp_files(tmp_path) == [live_pid_old]


def test_store_gc_keeps_a_fresh_temp_file_of_another_hosts_writer(tmp_path: Path):
    store = store_at(tmp_path / "store")
    folder = store.directory / "shards" / "ab"
    folder.mkdir(parents=True)
    other_host = folder / f".{'ab' * 32}.h5.{2 ** 22 + 999}.tmp"  # a writer on another machine, mid-write
    other_host.write_bytes(b"half")
    store.gc(set())
    assert other_host.exists()


# -- a full disk ------------------------------------------------------------------------------------
class _FullDisk:
    """A write handle on a disk with `room` bytes left."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def fill_disk(monkeypatch, under: Path, room: int = 0) -> None:
    """Make writes of files under `under` fail with ENOSPC once `room` bytes are used (what a full disk does)."""
    original = atomic._open_handle

    def open_handle(fd: int, tmp: Path):
        handle = original(fd, tmp)
        return _FullDisk(handle, room) if Path(under) in tmp.parents else handle

    monkeypatch.setattr(atomic, "_open_handle", open_handle)


def test_a_full_disk_names_the_folder_the_space_needed_and_doctor(tmp_path: Path, monkeypatch):
    from evalstack.core.atomic import DiskFullError

    out = tmp_path / "data" / "raw" / "00003.h5"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"old")
    fill_disk(monkeypatch, tmp_path / "data", room=10)
    with pytest.raises(DiskFullError) as raised:
        atomic_write_bytes(out, b"x" * 5000)
    message = str(raised.value)
    assert f"no space left on the disk holding {out.parent}: writing 00003.h5 needs 5.0 kB and " in message
    assert "are free" in message and "`evalstack doctor`" in message and raised.value.errno == errno.ENOSPC
    assert out.read_bytes() == b"old" and sorted(p.name for p in out.parent.iterdir()) == ["00003.h5"]
    source = tmp_path / "big.bin"
    source.write_bytes(b"y" * 3_000_000)
    with pytest.raises(DiskFullError, match=r"writing copy.bin needs 3.0 MB"):
        atomic_copy(source, tmp_path / "data" / "copy.bin")
