"""Remembered sha256 of files, keyed as DVC's state database keys its md5s: inode + size + mtime.

Stages check every upstream shard's sha256 before use, and the store checks every entry
it reuses. On a rerun after a small change, re-reading gigabytes that have not changed
since they were last hashed is most of the work. A file whose (device, inode, size,
mtime_ns) are what they were when it was hashed is taken to hold the same bytes — the
bet `dvc status` makes. Anything that rewrites a file changes its mtime, so a damaged or
edited shard is still hashed and refused. `evalstack verify` never uses stamps: it is
the check for damage that leaves the metadata alone (bit rot).

Other facts read from a file's bytes are remembered the same way, beside its sha256: the item count
a shard's header records, which readers compare with the layer index (an HDF5 open per shard
otherwise, as long as reading a 19 MB tensor from the page cache).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.keys import sha256_file


@dataclass(frozen=True)
class HashStamps:
    directory: Path
    # (device, inode, size, mtime_ns) → sha256 of files this process read in full
    _read_here: dict[tuple[int, int, int, int], str] = field(default_factory=dict, compare=False, repr=False)

    def sha256(self, path: Path) -> str:
        """The file's sha256: remembered when its stat is unchanged, else computed and remembered."""
        return self._sha256(path, trust_stamp=True)

    def sha256_read_here(self, path: Path) -> str:
        """The file's sha256 from its bytes, read once in this process (then remembered for it, and stamped).

        For a file something is computed from and stored under the sha256 an index records: a damaged file
        whose stat did not change passes `sha256`, and what is computed from it would go into the shard
        store under the undamaged file's address, where every checkout sharing the store reuses it."""
        return self._sha256(path, trust_stamp=False)

    def _sha256(self, path: Path, trust_stamp: bool) -> str:
        status = os.stat(path)  # once: the stamp, this process's reads and a new stamp all key on it
        key = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
        if key in self._read_here:
            return self._read_here[key]
        known = self._read(status)
        if trust_stamp and "sha256" in known:
            return known["sha256"]
        self._read_here[key] = digest = sha256_file(path)
        if known.get("sha256") != digest:  # a read that confirms the stamp leaves it: evaluate reads ~1,000 a run
            self._write(status, {**known, "sha256": digest})
        return digest

    def fact(self, path: Path, name: str, compute: Callable[[Path], Any]) -> Any:
        """`compute(path)`, a fact about the file's bytes (its sha256, the item count its header records),
        remembered beside the others while the file's stat is unchanged: the same bet as its sha256."""
        status = os.stat(path)
        known = self._read(status)
        if name in known:
            return known[name]
        value = compute(path)
        self._write(status, {**known, name: value})
        return value

    def remember(self, path: Path, sha256: str) -> None:
        """Record the sha256 of a file just written or copied by this process (so known to be right)."""
        self._write(os.stat(path), {"sha256": sha256})

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _stamp_path(self, status: os.stat_result) -> Path:
        return self.directory / f"{status.st_dev:x}-{status.st_ino:x}.json"

    def _read(self, status: os.stat_result) -> dict[str, Any]:
        """The facts remembered for the file at this stat; none if it changed since (or never seen)."""
        try:
            stamp = json.loads(self._stamp_path(status).read_text())
        except (OSError, ValueError):
            return {}
        if stamp.get("size") == status.st_size and stamp.get("mtime_ns") == status.st_mtime_ns:
            return stamp.get("facts", {})
        return {}

    def _write(self, status: os.stat_result, facts: dict[str, Any]) -> None:
        path = self._stamp_path(status)
        stamp = json.dumps({"size": status.st_size, "mtime_ns": status.st_mtime_ns, "facts": facts}).encode()
        try:  # a lost stamp only costs a re-hash, so no fsync
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, stamp, durable=False)
        except OSError:
            pass
