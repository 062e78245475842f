"""Publishing a file atomically: write a temp file beside it, fsync, rename.

A reader never sees half a file, and a crash leaves only a temp file, never something
that looks like a result. Temp names are unpredictable and created exclusively without
following symlinks, so a link planted in a shared directory (a shared `store.dir`)
cannot redirect a write. Stale temp files are recognised by age, not by a process id,
because on a shared filesystem the id may belong to another host.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_SUFFIX = ".tmp"
TEMP_GLOB = f".*{TEMP_SUFFIX}"
STALE_AFTER_S = 3600.0  # a shard or record is written in seconds; an hour-old temp file is a crash's leftover
_CHUNK = 1 << 20
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_CANNOT_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP)


def temp_path(path: Path) -> Path:
    """An unpredictable name beside `path` in the pattern `TEMP_GLOB` matches."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")


@contextlib.contextmanager
def atomic_writer(path: Path, durable: bool = True, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A handle on a fresh temp file that becomes `path` when the block ends without an exception."""
    path = Path(path)
    tmp = temp_path(path)
    fd = os.open(tmp, _CREATE, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # only there when the block failed: nothing half-written stays


def atomic_write_bytes(path: Path, data: bytes | memoryview, durable: bool = True) -> None:
    with atomic_writer(path, durable) as handle:
        handle.write(data)


class _Mismatch(Exception):
    pass


def atomic_copy(source: Path, dest: Path, expected_sha256: str | None = None, mode: int = 0o644) -> str | None:
    """Copy `source` to `dest` in one pass, hashing the bytes written; the sha256, or None (and `dest`
    untouched) when it differs from `expected_sha256`."""
    digest = hashlib.sha256()
    try:
        with atomic_writer(dest, mode=mode) as writer, open(source, "rb") as reader:
            for chunk in iter(lambda: reader.read(_CHUNK), b""):
                digest.update(chunk)
                writer.write(chunk)
            if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
                raise _Mismatch
    except _Mismatch:
        return None
    return digest.hexdigest()


def atomic_link(source: Path, dest: Path) -> bool:
    """Make `dest` a hardlink of `source` (replacing what was there); False where hardlinks cannot be made."""
    tmp = temp_path(dest)
    try:
        os.link(source, tmp, follow_symlinks=False)
    except OSError as error:
        if error.errno in _CANNOT_LINK:
            return False
        raise
    try:
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True


def stale_temp_files(directory: Path, pattern: str = TEMP_GLOB, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Temp files under `directory` (glob `pattern`) untouched for `older_than_s` seconds."""
    cutoff = time.time() - older_than_s
    stale = []
    for path in Path(directory).glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            if path.lstat().st_mtime < cutoff:
                stale.append(path)
    return stale
