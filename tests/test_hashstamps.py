"""Remembered hashes: unchanged files are not re-read; any rewrite is hashed again and caught."""
import hashlib
import os
from pathlib import Path

import pytest

from evalstack.core import hashstamps
from evalstack.core.hashstamps import HashStamps


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    seen: list[Path] = []
    real = hashstamps.sha256_file

    def counting(path):
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(hashstamps, "sha256_file", counting)
    return seen


def test_an_unchanged_file_is_hashed_once(tmp_path: Path, reads: list[Path]):
    stamps, shard = HashStamps(tmp_path / "stamps"), tmp_path / "00000.h5"
    shard.write_bytes(b"shard bytes")
    expected = hashlib.sha256(b"shard bytes").hexdigest()
    assert [stamps.sha256(shard) for _ in range(3)] == [expected] * 3
    assert reads == [shard]
    linked = tmp_path / "linked.h5"  # a hardlink is the same file: its stamp serves both names
    os.link(shard, linked)
    assert stamps.sha256(linked) == expected and len(reads) == 1


def test_a_rewrite_of_the_same_size_is_hashed_again(tmp_path: Path, reads: list[Path]):
    stamps, shard = HashStamps(tmp_path / "stamps"), tmp_path / "00000.h5"
    shard.write_bytes(b"AAAA")
    first = stamps.sha256(shard)
    shard.write_bytes(b"AAAB")  # a flipped byte: same size, new mtime
    assert stamps.sha256(shard) == hashlib.sha256(b"AAAB").hexdigest() != first
    assert len(reads) == 2


def test_remembered_and_cleared_stamps(tmp_path: Path, reads: list[Path]):
    stamps, shard = HashStamps(tmp_path / "stamps"), tmp_path / "00000.h5"
    shard.write_bytes(b"written by this process")
    stamps.remember(shard, "a" * 64)  # what a writer that hashed the bytes in memory would record
    assert stamps.sha256(shard) == "a" * 64 and reads == []
    stamps.clear()
    assert stamps.sha256(shard) == hashlib.sha256(b"written by this process").hexdigest() and len(reads) == 1


def test_a_fact_is_remembered_beside_the_sha256_until_the_file_changes(tmp_path: Path, reads: list[Path]):
    stamps, shard = HashStamps(tmp_path / "stamps"), tmp_path / "00000.h5"
    shard.write_bytes(b"four items")
    counted: list[Path] = []

    def count(path: Path) -> int:
        counted.append(path)
        return len(path.read_bytes().split())

    assert stamps.sha256(shard) == hashlib.sha256(b"four items").hexdigest()
    assert [stamps.fact(shard, "n_items", count) for _ in range(3)] == [2, 2, 2] and counted == [shard]
    assert stamps.sha256(shard) and len(reads) == 1  # remembering the count kept the sha256
    shard.write_bytes(b"now three words")  # a rewrite: every fact is read again
    assert stamps.fact(shard, "n_items", count) == 3 and len(counted) == 2
    assert stamps.sha256(shard) == hashlib.sha256(b"now three words").hexdigest() and len(reads) == 2


def test_checking_a_shard_twice_opens_its_header_once(tmp_path: Path, monkeypatch):
    from evalstack.core import layers
    from evalstack.core.layers import Layer, remembered_checks
    from tests.layers import Project

    project = Project(tmp_path / "project")
    project.grow(6)
    project.fetch(None)
    layer = Layer.open(project.raw)
    opened: list[Path] = []
    real = layers.read_item_count
    monkeypatch.setattr(layers, "read_item_count", lambda path: (opened.append(path), real(path))[1])
    checks = remembered_checks(HashStamps(tmp_path / "stamps"))
    for _ in range(2):
        for shard in layer.shards:
            layer.check_shard(shard, **checks)
    assert opened == [layer.path(shard) for shard in layer.shards]  # the second pass remembered every count
    layer.check_shard(layer.shards[0])  # without stamps: read every time
    assert len(opened) == len(layer.shards) + 1


def test_a_read_that_confirms_the_stamp_leaves_it_and_one_that_contradicts_it_replaces_it(tmp_path: Path,
                                                                                         reads: list[Path]):
    shard = tmp_path / "00000.h5"
    shard.write_bytes(b"ABCD")
    HashStamps(tmp_path / "stamps").sha256(shard)
    (stamp,) = (tmp_path / "stamps").iterdir()
    written = stamp.stat()
    # another process reads the shard in full: the same bytes, so the stamp is not written again
    assert HashStamps(tmp_path / "stamps").sha256_read_here(shard) == hashlib.sha256(b"ABCD").hexdigest()
    assert len(reads) == 2 and (stamp.stat().st_ino, stamp.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    # damage that kept the size and mtime: the stamp's bet is wrong, the read says so, and the stamp is mended
    kept = shard.stat()
    shard.write_bytes(b"ABCE")
    os.utime(shard, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert HashStamps(tmp_path / "stamps").sha256(shard) == hashlib.sha256(b"ABCD").hexdigest()  # the bet
    assert HashStamps(tmp_path / "stamps").sha256_read_here(shard) == hashlib.sha256(b"ABCE").hexdigest()
    assert HashStamps(tmp_path / "stamps").sha256(shard) == hashlib.sha256(b"ABCE").hexdigest()
