"""`evalstack verify --cache`: re-hash the DVC cache objects behind what each profile's dvc.lock records.

DVC trusts its cache: `dvc status` compares the workspace with dvc.lock, `dvc checkout` copies a
cache object back without hashing it (so a damaged object is restored as it is), `dvc repro -f`
finds an object of that name already there and keeps it, and `dvc push` uploads it. An object's
name is the md5 of its bytes, so re-hashing it is the whole check. The repair: remove the damaged
object, then restore it from a remote (`dvc fetch`/`dvc pull`) or recompute it (`dvc repro -f`),
which writes a new object because the name is free again.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from evalstack.cache.dvcfiles import LockedOut, cache_dir, cache_file, dir_listing, locked_outs

_CHUNK = 1 << 20


@dataclass(frozen=True)
class DamagedObject:
    profile: Path  # the folder of the dvc.lock that records it
    out: LockedOut
    relpath: str  # the file inside a directory output ("" for the output itself or its listing)
    path: Path  # the cache object
    actual: str  # md5 of its bytes now

    def describe(self, root: Path) -> str:
        what = f"{self.out.path}/{self.relpath}" if self.relpath else self.out.path
        where = self.profile.relative_to(root).as_posix() if self.profile != root else "."
        return (f"{self.path}: md5 of its bytes is {self.actual}, its name says "
                f"{self.path.parent.name}{self.path.name}; it holds {what} of stage {self.out.stage} "
                f"(dvc.lock in {where})")


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _objects(profile: Path, out: LockedOut, cache: Path) -> Iterator[tuple[str, str]]:
    """(relpath, md5) of every object an output needs: a file, or a directory's listing and its files."""
    if not out.md5:
        return
    yield "", out.md5
    for relpath, md5 in sorted((dir_listing(cache, out.md5) or {}).items()):
        yield relpath, md5


def check_cache(profile: Path) -> tuple[int, list[DamagedObject]]:
    """(objects re-hashed, damaged ones) for one profile's dvc.lock; objects not in this cache are not damage
    (they were never fetched here) and are not counted."""
    cache = cache_dir(profile)
    checked, damaged, seen = 0, [], set()
    for out in locked_outs(profile):
        for relpath, md5 in _objects(profile, out, cache):
            path = cache_file(cache, md5)
            if md5 in seen or not path.is_file():
                continue
            seen.add(md5)
            checked += 1
            actual = md5_file(path)
            if actual != md5.removesuffix(".dir"):
                damaged.append(DamagedObject(profile, out, relpath, path, actual))
    return checked, damaged


def repair_lines(damaged: list[DamagedObject], root: Path) -> list[str]:
    """The commands that repair what is named: remove each object, then fetch it again or recompute it."""
    objects = " ".join(sorted({str(d.path) for d in damaged}))
    stages = sorted({(d.profile, d.out.stage) for d in damaged})
    lines = [f"rm -f {objects}"]
    for profile, stage in stages:
        where = f"cd {profile.relative_to(root).as_posix()} && " if profile != root else ""
        lines.append(f"{where}dvc pull {stage}    # from a remote that has an intact copy, or:")
        lines.append(f"{where}dvc repro -f -s {stage}    # recompute it (writes a new object)")
    return lines
