"""Scratch space another process may still use: marked by a file locked while its owner runs.

A fetch keeps scratch files in the store's folder (its listing database, its stash of the previous
layer's bytes), and that folder may be shared by checkouts running at once. A sweep of what a killed
fetch left behind cannot go by age alone: a long fetch's files are old too. So the owner holds
`<path>.live` locked (flock) for as long as it uses `<path>`, and a sweep takes only what
is old and unmarked: the kernel drops the lock when its holder dies, however it dies. On NFS the
lock reaches other hosts; on a mount without locks (`nolock`) this is what age alone gave.

A clone whose evalstack predates these marks removes the whole `stash/` folder when its fetch ends:
clones sharing one store.dir at once should run the same version (the cost is downloads, never a
wrong answer: stashed bytes are checked against their sha256 when used).
"""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from evalstack.core.atomic import STALE_AFTER_S, stale_temp_files, temp_path

LIVE_SUFFIX = ".live"
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# a FIFO or symlink planted where a mark goes never blocks or redirects a sweep
_PROBE = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _mark_of(path: Path) -> Path:
    return path.with_name(path.name + LIVE_SUFFIX)


class LiveMark:
    """Holds `<path>.live` until `release()` or the end of this process."""

    def __init__(self, path: Path):
        self.mark = _mark_of(Path(path))
        self.mark.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(self.mark)
        # Read-write and exclusive: the NFS client turns flock into a POSIX lock, which needs a mode
        # the descriptor was opened for (read for shared, write for exclusive).
        self._fd: int | None = os.open(tmp, _CREATE, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            os.replace(tmp, self.mark)  # published only once held: a sweep never sees it unheld while its owner lives
        except BaseException:
            os.close(self._fd)
            tmp.unlink(missing_ok=True)
            raise

    def release(self) -> None:
        """After the owner removed what it marked."""
        if self._fd is None:
            return
        self.mark.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def is_live(path: Path) -> bool:
    """Whether a process still holds the mark of `path`. A mark that cannot be probed counts as held:
    a sweep then leaves a leftover, which costs space, never a live fetch's files."""
    try:
        fd = os.open(_mark_of(Path(path)), _PROBE)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held; anything else (a server that refuses locks): assume held
        return True
    finally:
        os.close(fd)  # drops the lock this probe may have taken
    return False


def sweep_unmarked(directory: Path, pattern: str, older_than_s: float = STALE_AFTER_S) -> int:
    """Remove the files or folders under `directory` (glob `pattern`) that are old and unmarked, and the
    marks dead owners left. Returns how many were removed."""
    removed = 0
    for path in stale_temp_files(directory, pattern, older_than_s):
        if path.name.endswith(LIVE_SUFFIX) or is_live(path):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
        except FileNotFoundError:  # its owner, or another sweep, removed it meanwhile
            continue
    for mark in stale_temp_files(directory, f"*{LIVE_SUFFIX}", older_than_s):
        if not is_live(mark.with_name(mark.name[: -len(LIVE_SUFFIX)])):
            mark.unlink(missing_ok=True)
    return removed
