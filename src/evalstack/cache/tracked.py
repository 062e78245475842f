"""What the running DVC stage tracks: its deps in dvc.yaml, and a refusal to use an input it does not track.

DVC reruns a stage only when a dep changes. A stage that reads a file no dep covers (your own pipeline or
adapter module outside `src/evalstack`, the folder or registry a fetch reads) is skipped after an edit of that
file: "Data and pipelines are up to date", exit 0, the old outputs. The cache keys would see the edit, but no
key is computed when the stage does not run. So a stage run by DVC refuses, on its first run already, to use
such an input, and says which dep to add.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote, urlparse

import yaml

from evalstack.core.fingerprint import INSTALLED, PACKAGE, is_installed
from evalstack.core.modules import locate


class UntrackedInputError(RuntimeError):
    """A stage run by DVC reads a file that none of its deps covers."""


def stage_deps() -> tuple[str, list[Path]] | None:
    """(the stage's name, its deps as absolute paths) while DVC runs a stage (DVC sets DVC_STAGE and DVC_ROOT);
    None otherwise. Deps that name a foreach item (`${item.pipeline}`) are the stage's data: left out."""
    addressing = os.environ.get("DVC_STAGE")
    if not addressing:
        return None
    root = Path(os.environ.get("DVC_ROOT") or ".")
    file, _, name = addressing.rpartition(":")
    dvcfile = root / (file or "dvc.yaml")
    try:
        loaded = yaml.load(dvcfile.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        stages = loaded.get("stages") or {}
    except (OSError, yaml.YAMLError):
        return None
    entry = stages.get(name) or stages.get(name.split("@")[0])
    if not isinstance(entry, dict):
        return None
    definition = entry.get("do", entry) if ("foreach" in entry or "matrix" in entry) else entry
    folder = dvcfile.parent / str(definition.get("wdir", "."))
    deps = [(folder / dep).resolve() for dep in definition.get("deps") or []
            if isinstance(dep, str) and "${" not in dep]
    return name, deps


def check_tracked(inputs: Iterable[tuple[str, Path]]) -> None:
    """Refuse, under `dvc repro`, an input (what, path) that none of the running stage's deps covers."""
    inputs = list(inputs)
    if not inputs or not os.environ.get("DVC_STAGE"):
        return  # the template's own stages have none: no dvc.yaml parse (~10 ms) per robustness cell
    found = stage_deps()
    if found is None:
        return
    name, deps = found
    root = Path(os.environ.get("DVC_ROOT") or ".").resolve()
    untracked = [(what, Path(path).resolve()) for what, path in inputs]
    untracked = [(what, path) for what, path in untracked
                 if not any(path == dep or path.is_relative_to(dep) for dep in deps)]
    if not untracked:
        return
    shown = [os.path.relpath(path, root) for _, path in untracked]
    # one dep that covers them all: the file itself, or the folder they share (a package's __init__ and module)
    covering = shown[0] if len(shown) == 1 else os.path.commonpath(shown) or "."
    listed = ", ".join(f"{what} {path}" for (what, _), path in zip(untracked, shown))
    raise UntrackedInputError(
        f"{name} reads {listed}, which none of its deps in dvc.yaml covers: DVC would not rerun it when that "
        f"changes, and its old outputs would stay. Add `- {covering}` to the stage's deps")


def users_code(code: dict[str, str]) -> list[tuple[str, Path]]:
    """The files of a key's code part that are the user's own, outside evalstack (whose folders the template's
    dvc.yaml lists, and tests/test_layout.py checks): ("code", path) for each."""
    found = []
    for name in sorted(code):
        if name.startswith(INSTALLED) or name == PACKAGE or name.startswith(PACKAGE + "."):
            continue
        source = locate(name)
        if source is not None and not is_installed(source.path):
            found.append(("code", source.path))
    return found


def local_source_files(kind: str, registries: dict[str, str], folder: str, labels: str) -> list[tuple[str, Path]]:
    """What a fetch reads from this machine's disk and must track: a folder source's folder (images and labels,
    with no digest to check them by), a local registry's CSV files (the listing; each row carries its image's
    md5). A server (a registry URL, the PAD API) is no file: `dvc repro -f fetch` fetches it again."""
    if kind == "folder":
        return [("the folder source", Path(folder))] + ([("the labels file", Path(labels))] if labels else [])
    if kind == "registry":
        found = []
        for split, location in sorted(registries.items()):
            url = urlparse(location)
            if url.scheme == "file":  # read as sources.registry.read_local reads it
                found.append((f"the {split} registry", Path(unquote(url.path))))
            elif "://" not in location:
                found.append((f"the {split} registry", Path(location)))
        return found
    return []
