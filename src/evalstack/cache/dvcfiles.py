"""What DVC tracks: the outputs `dvc.lock` records and their files in DVC's cache.

Read directly from `dvc.lock` and the cache layout (`files/md5/ab/cdef…`, a `.dir`
object listing a directory's files) rather than through DVC's Python internals,
which are not a public API. `gc` uses this to keep every shard the current
`dvc.lock` needs, and stages use it to seed the shard store from outputs a fresh
clone pulled.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from evalstack.core import yamlload
from evalstack.core.layers import INDEX_NAME, LayerIndex, ShardInfo, StoreError
from evalstack.core.names import UnsafeName, check_dvc_md5

LOCK_NAME = "dvc.lock"


@dataclass(frozen=True)
class LockedOut:
    stage: str
    path: str  # relative to the repository root, as dvc.lock writes it
    md5: str | None  # "<md5>.dir" for a directory


@dataclass(frozen=True)
class LockedLayer:
    """A layer directory as `dvc.lock` records it: its index and where each shard's bytes are."""

    out: LockedOut
    index: LayerIndex
    files: dict[str, Path]  # shard name → a readable copy (DVC cache file or workspace file)
    from_cache: bool  # files are DVC cache files (immutable), not workspace files


def find_repo_root(start: Path) -> Path | None:
    """The nearest directory at or above `start` holding `.dvc/` (None outside a DVC repository)."""
    for directory in [start.resolve(), *start.resolve().parents]:
        if (directory / ".dvc").is_dir():
            return directory
    return None


class LockFileError(StoreError):
    """dvc.lock exists but cannot be read (empty after a killed `dvc repro`, or damaged)."""


def read_lock(lock: Path) -> dict | None:
    """dvc.lock parsed; None when it does not exist (nothing was run). A present but empty or
    unreadable file is an error: treating it as "nothing recorded" would let `gc` drop shards
    the real lock file needs."""
    if not lock.exists():
        return None
    text = lock.read_text()
    problem = ""
    if not text.strip():
        problem = f"is empty ({len(text)} bytes): DVC was stopped while updating it"
    else:
        try:
            data = yamlload.safe_load(text)
        except yaml.YAMLError as error:
            problem = f"is not valid YAML ({str(error).splitlines()[0]})"
        else:
            if isinstance(data, dict) and isinstance(data.get("stages") or {}, dict):
                return data
            problem = "is not a DVC lock file (no `stages:` mapping)"
    raise LockFileError(f"{lock} {problem}; `git checkout {lock.name}` restores the committed one, or delete it "
                        "and `dvc commit -f` records the outputs you have. `evalstack doctor` explains.")


def locked_outs(root: Path) -> list[LockedOut]:
    data = read_lock(root / LOCK_NAME) or {}
    outs = []
    for stage, record in sorted((data.get("stages") or {}).items()):
        for out in record.get("outs") or []:
            outs.append(LockedOut(stage=stage, path=str(out["path"]), md5=out.get("md5")))
    return outs


def cache_dir(root: Path) -> Path:
    """DVC's local cache: `cache.dir` from `.dvc/config.local` or `.dvc/config`, else `.dvc/cache`."""
    for name in ("config.local", "config"):
        configured = _config_value(root / ".dvc" / name, "cache", "dir")
        if configured:
            return (root / ".dvc" / configured).resolve()
    return root / ".dvc" / "cache"


def _config_value(path: Path, section: str, option: str) -> str | None:
    return config_sections(path).get(section, {}).get(option)


def config_sections(path: Path) -> dict[str, dict[str, str]]:
    """A DVC config file (`.dvc/config`, configobj layout) as {section: {option: value}};
    sections are named as DVC writes them: `core`, `remote "storage"`."""
    sections: dict[str, dict[str, str]] = {}
    if not path.exists():
        return sections
    current = None
    for line in path.read_text().splitlines():
        header = re.match(r"\s*\[\s*'?(.+?)'?\s*\]\s*$", line)
        if header:
            current = header.group(1)
            sections.setdefault(current, {})
            continue
        pair = re.match(r"\s*([\w.-]+)\s*=\s*(.*?)\s*$", line)
        if pair and current is not None:
            sections[current][pair.group(1)] = pair.group(2)
    return sections


def dvc_config(root: Path) -> dict[str, dict[str, str]]:
    """`.dvc/config` with `.dvc/config.local` over it, as DVC merges them."""
    merged = config_sections(root / ".dvc" / "config")
    for section, options in config_sections(root / ".dvc" / "config.local").items():
        merged.setdefault(section, {}).update(options)
    return merged


def cache_file(cache: Path, md5: str) -> Path:
    """Where DVC's cache keeps the object `md5` (checked: it comes from dvc.lock or a `.dir` listing)."""
    try:
        check_dvc_md5(md5)
    except UnsafeName as error:
        raise StoreError(f"{cache}: {error}; refusing to read outside DVC's cache "
                         "(dvc.lock or a cached directory listing is crafted or damaged)") from None
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def dir_listing(cache: Path, md5: str | None) -> dict[str, str] | None:
    """relpath → md5 of a cached directory output, or None when the cache lacks it."""
    if not md5 or not md5.endswith(".dir"):
        return None
    path = cache_file(cache, md5)
    if not path.exists():
        return None
    return {entry["relpath"]: entry["md5"] for entry in json.loads(path.read_text())}


def locked_layer(root: Path, out: LockedOut, cache: Path | None = None) -> LockedLayer | None:
    """The layer `out` records, read from DVC's cache, else from the workspace.

    None when `out` is not a layer (no index) or neither copy is available. Workspace
    files may have changed since; users of them check each shard's sha256.
    """
    listing = dir_listing(cache or cache_dir(root), out.md5)
    if listing is not None and INDEX_NAME in listing:
        cache = cache or cache_dir(root)
        index_file = cache_file(cache, listing[INDEX_NAME])
        if index_file.exists():
            index = LayerIndex.from_json(index_file.read_text(), f"{out.path}/{INDEX_NAME} in DVC's cache ({index_file})")
            files = {s.name: cache_file(cache, listing[s.name]) for s in index.shards if s.name in listing}
            return LockedLayer(out, index, {n: p for n, p in files.items() if p.exists()}, from_cache=True)
    workspace = root / out.path / INDEX_NAME
    if workspace.exists():
        index = LayerIndex.from_json(workspace.read_text(), str(workspace))
        return LockedLayer(out, index, {s.name: root / out.path / s.name for s in index.shards}, from_cache=False)
    return None


def nested_locked_layers(root: Path, out: LockedOut, cache: Path) -> list[LockedLayer]:
    """Layers one level inside an output (the robustness grid's `<model>/<type>-<severity>/`), from DVC's cache."""
    listing = dir_listing(cache, out.md5) or {}
    layers = []
    for relpath in sorted(name for name in listing if name.count("/") == 1 and name.endswith(f"/{INDEX_NAME}")):
        prefix = relpath.rsplit("/", 1)[0]
        index_file = cache_file(cache, listing[relpath])
        if not index_file.exists():
            continue
        index = LayerIndex.from_json(index_file.read_text(), f"{out.path}/{relpath} in DVC's cache ({index_file})")
        files = {s.name: cache_file(cache, listing[f"{prefix}/{s.name}"]) for s in index.shards
                 if f"{prefix}/{s.name}" in listing}
        layers.append(LockedLayer(out, index, {n: p for n, p in files.items() if p.exists()}, from_cache=True))
    return layers


def locked_layers(root: Path) -> list[LockedLayer]:
    cache = cache_dir(root)
    layers = []
    for out in locked_outs(root):
        layer = locked_layer(root, out, cache)
        layers.extend([layer] if layer is not None else nested_locked_layers(root, out, cache))
    return layers


def locked_shard_sha256s(root: Path) -> set[str]:
    """sha256 of every shard the current dvc.lock's layers list (what `gc` must keep)."""
    return {shard.sha256 for layer in locked_layers(root) for shard in layer.index.shards}


def locked_layer_for(out_dir: Path) -> LockedLayer | None:
    """The dvc.lock record of the layer that is (about to be) written to `out_dir`, if any."""
    root = find_repo_root(out_dir)
    if root is None:
        return None
    target = out_dir.resolve()
    for out in locked_outs(root):
        if (root / out.path).resolve() == target:
            return locked_layer(root, out)
    return None


def shard_files(layer: LockedLayer) -> list[tuple[ShardInfo, Path]]:
    return [(shard, layer.files[shard.name]) for shard in layer.index.shards if shard.name in layer.files]


def workspace_layers(root: Path) -> list[Path]:
    """Layer directories in the workspace: dvc.lock's outputs that hold an index, plus any under data/."""
    found = {(root / out.path) for out in locked_outs(root) if (root / out.path / INDEX_NAME).exists()}
    found |= {index.parent for index in (root / "data").glob(f"**/{INDEX_NAME}")}
    return sorted(found)
