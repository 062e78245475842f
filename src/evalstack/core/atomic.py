"""Publishing a file atomically: write a temp file beside it, fsync, rename.

A reader never sees half a file, and a crash leaves only a temp file, never something
that looks like a result. Temp names are unpredictable and created exclusively without
following symlinks, so a link planted in a shared directory (a shared `store.dir`)
cannot redirect a write. Stale temp files are recognised by age, not by a process id,
because on a shared filesystem the id may belong to another host.

A write that runs out of space (ENOSPC, EDQUOT) raises `DiskFullError`, which names the
folder, the bytes the file needed and the bytes free; the temp file is removed. Callers
that only cache (the shard store) catch it and stop caching; the rest fail with it.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_SUFFIX = ".tmp"
TEMP_GLOB = f".*{TEMP_SUFFIX}"
STALE_AFTER_S = 3600.0  # a shard or record is written in seconds; an hour-old temp file is a crash's leftover
_CHUNK = 1 << 20
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_CANNOT_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NAME_ATTEMPTS = 8  # a clash of 64 random bits is a planted file, not chance; a few fresh names are enough


class DiskFullError(OSError):
    """No space left where a file is published: names the folder, the bytes needed and the bytes free."""

    def __init__(self, path: Path, needed: int | None = None):
        self.path, self.needed = Path(path), needed
        free = free_bytes(self.path.parent)
        message = (f"no space left on the disk holding {published_folder(self.path.parent)}: writing {self.path.name} needs "
                   f"{format_bytes(needed) if needed is not None else 'more space'}"
                   f"{f' and {format_bytes(free)} are free' if free is not None else ''}; free space there "
                   "(`evalstack gc` trims the shard store) or move the folder to a larger disk. "
                   "`evalstack doctor` shows the free space of every folder the project writes")
        super().__init__(errno.ENOSPC, message)

    def __reduce__(self) -> tuple:
        # Rebuilt from its own arguments: raised in a worker process, it reaches the stage as itself. The default
        # (the class called with OSError's args) raises TypeError there, and the pool reports only that it broke.
        return type(self), (self.path, self.needed)


def published_folder(folder: Path) -> Path:
    """The folder a user knows: a layer being built lives in `.<name>.staging-<random>` beside `<name>`."""
    name = folder.name
    if name.startswith(".") and ".staging-" in name:
        return folder.with_name(name[1:].split(".staging-")[0])
    return folder


def is_no_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in NO_SPACE


def free_bytes(directory: Path) -> int | None:
    """Free bytes on the disk holding `directory` (its nearest existing ancestor); None if unknown."""
    for candidate in (Path(directory), *Path(directory).parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def format_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def temp_path(path: Path) -> Path:
    """An unpredictable name beside `path` in the pattern `TEMP_GLOB` matches."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")


def _create_temp(path: Path, mode: int) -> tuple[Path, int]:
    """A new temp file beside `path`, created exclusively (a planted file or symlink is never opened)."""
    for _ in range(_NAME_ATTEMPTS):
        tmp = temp_path(path)
        try:
            return tmp, os.open(tmp, _CREATE, mode)
        except FileExistsError:  # someone put something at this name: take another, never touch it
            continue
    raise FileExistsError(errno.EEXIST, f"{_NAME_ATTEMPTS} fresh temp names beside {path} were all taken")


def _open_handle(fd: int, tmp: Path) -> BinaryIO:
    """The write handle on a new temp file (one place, so a test can make the disk 'full' here)."""
    return os.fdopen(fd, "wb")


@contextlib.contextmanager
def atomic_writer(path: Path, durable: bool = True, mode: int = 0o644, expected_bytes: int | None = None
                  ) -> Iterator[BinaryIO]:
    """A handle on a fresh temp file that becomes `path` when the block ends without an exception.
    `expected_bytes` is what the file will need, for the message when the disk is full."""
    path = Path(path)
    tmp: Path | None = None
    try:
        tmp, fd = _create_temp(path, mode)
        with _open_handle(fd, tmp) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        if is_no_space(error) and not isinstance(error, DiskFullError):
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()  # first, so the message says what is free without our half-written file
            raise DiskFullError(path, expected_bytes) from None
        raise
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()  # only there when the block failed: nothing half-written stays


def atomic_write_bytes(path: Path, data: bytes | memoryview, durable: bool = True) -> None:
    with atomic_writer(path, durable, expected_bytes=len(data)) as handle:
        handle.write(data)


class _Mismatch(Exception):
    pass


def atomic_copy(source: Path, dest: Path, expected_sha256: str | None = None, mode: int = 0o644) -> str | None:
    """Copy `source` to `dest` in one pass, hashing the bytes written; the sha256, or None (and `dest`
    untouched) when it differs from `expected_sha256`."""
    digest = hashlib.sha256()
    try:
        with atomic_writer(dest, mode=mode, expected_bytes=os.stat(source).st_size) as writer, open(source, "rb") as reader:
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
    for attempt in range(_NAME_ATTEMPTS):
        tmp = temp_path(dest)
        try:
            os.link(source, tmp, follow_symlinks=False)  # fails on any existing name, a planted symlink too
            break
        except FileExistsError:
            if attempt == _NAME_ATTEMPTS - 1:
                raise
        except OSError as error:
            if error.errno in _CANNOT_LINK:
                return False
            if is_no_space(error):
                raise DiskFullError(dest, 0) from None  # a link needs no data blocks, but a directory entry
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
