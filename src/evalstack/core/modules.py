"""Where a module's source file is, found without importing anything, and how a message names it.

Apart from core/fingerprint.py, which keys use to digest code: core/keys.py names changed modules in its messages,
and the raw layer's key covers core/keys.py's import closure. A message is no reason for every edit of the
fingerprinting code to rebuild every raw layer.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path


@dataclass(frozen=True)
class ModuleSource:
    name: str
    path: Path

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


@lru_cache(maxsize=None)
def locate(name: str) -> ModuleSource | None:
    """The source file of module `name`, found without importing anything (None: no such module, or not a
    .py file).

    `importlib.util.find_spec("a.b.c")` imports `a.b` to find `c`, and the closure asks about every dotted
    candidate (`evalstack.cache.dask_plugins.WorkerPlugin` imports dask_plugins, hence dask: 0.17 s in
    every stage process that computes a key). So only the top-level name goes to the import system, which
    imports nothing for it; below it, the package's directories are searched as Python's path finder does:
    a package directory, then an extension module (not ours to fingerprint), then `<part>.py`, then a
    namespace directory.
    """
    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    origin, directories = spec.origin, list(spec.submodule_search_locations or ())
    for part in rest:
        origin, directories = _find_in(directories, part)
        if origin is None and not directories:
            return None
    if not origin or not origin.endswith(".py") or not os.path.isfile(origin):  # a zip member is not ours to read
        return None
    return ModuleSource(name, Path(origin))


def _find_in(directories: list[str], part: str) -> tuple[str | None, list[str]]:
    """(origin, search directories) of submodule `part` within a package's `directories`."""
    namespace = []
    for directory in map(Path, directories):
        package = directory / part
        if (package / "__init__.py").is_file():
            return str(package / "__init__.py"), [str(package)]
        if any((directory / f"{part}{suffix}").is_file() for suffix in EXTENSION_SUFFIXES):
            return "", []
        if (directory / f"{part}.py").is_file():
            return str(directory / f"{part}.py"), []
        if package.is_dir():
            namespace.append(str(package))
    return None, namespace


def module_path(name: str) -> str:
    """How a message names a module: its file under src/ (`src/evalstack/preprocess/regions.py`)."""
    source = locate(name)
    if source is not None and "src" in source.path.parts:
        parts = source.path.parts
        return "/".join(parts[len(parts) - 1 - parts[::-1].index("src"):])
    return name
