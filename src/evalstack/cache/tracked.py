"""What the running DVC stage tracks: its deps in dvc.yaml, and a refusal to use an input it does not track.

DVC reruns a stage only when a dep changes. A stage that reads a file no dep covers (your own pipeline or
adapter module, a module of evalstack's its deps leave out, the folder or registry a fetch reads, your package
installed from a folder without `-e`) is skipped after an edit of that file: "Data and pipelines are up to
date", exit 0, the old outputs. The cache keys would see the edit, but no key is computed when the stage does
not run. So a stage run by DVC refuses, on its first run already, to use such an input, and says which dep to add.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote, urlparse

import yaml

from evalstack.core import yamlload
from evalstack.core.fingerprint import INSTALLED, PACKAGE, distribution_of, is_installed
from evalstack.core.modules import locate


class UntrackedInputError(RuntimeError):
    """A stage run by DVC reads a file that none of its deps covers, or the stage cannot be found."""


@dataclass(frozen=True)
class Input:
    """A file or folder a stage reads. `folder_dep`: the dep to suggest is its folder (a module: the package)."""

    what: str
    path: Path
    folder_dep: bool = False


@dataclass(frozen=True)
class RunningStage:
    name: str  # as DVC names it: fetch, preprocess@gray64
    wdir: Path  # where it runs, resolved
    deps: tuple[Path, ...]  # resolved; deps that name a foreach item (`${item.x}`) are the stage's data: left out


def running_stage() -> RunningStage | None:
    """The stage DVC is running in this process (DVC sets DVC_STAGE), found in its dvc.yaml; None outside DVC."""
    addressing = os.environ.get("DVC_STAGE")
    if not addressing:
        return None
    return _find_stage(addressing, os.getcwd())


@lru_cache(maxsize=8)
def _find_stage(addressing: str, cwd: str) -> RunningStage:
    # DVC_STAGE is `<dvc.yaml relative to where dvc was started>:<name>` (just the name for the dvc.yaml
    # there), and DVC_ROOT is the workspace even under `dvc exp run --temp`/`--queue`, where the stage runs in a
    # copy. So the dvc.yaml is found from where `dvc` runs (its process's folder), else looked for from the
    # stage's wdir (where the stage runs) up to the repository: a dvc.yaml with that stage running there.
    file, _, name = addressing.rpartition(":")
    here = Path(cwd).resolve()
    started = _dvc_folder()
    if started is not None:
        found = _named(started / (file or "dvc.yaml"), name, here)
        if found:
            return found[0]
    folders = _up_to_repository(here)
    # where dvc may have started: a folder on the way up (`dvc repro pipelines/dvc.yaml:x` from the root)
    found = list(dict.fromkeys(stage for folder in folders for stage in _named(folder / (file or "dvc.yaml"), name,
                                                                                 here)))
    if not found:  # started elsewhere (`cd stages && dvc repro ../dvc.yaml:x`): the dvc.yamls up the way
        found = list(dict.fromkeys(stage for folder in folders for stage in _named(folder / "dvc.yaml", name, here)))
    if len(found) != 1:
        raise UntrackedInputError(
            f"cannot tell which dvc.yaml stage {name!r} running in {here} comes from "
            f"({'none' if not found else len(found)} of them name it), so cannot check that its deps cover what "
            f"it reads; run `dvc repro` from the repository's root")
    return found[0]


def _up_to_repository(folder: Path) -> list[Path]:
    """`folder` and the folders above it up to the repository's (the one holding `.dvc`); [folder] outside one."""
    way = [folder, *folder.parents]
    return next((way[: n + 1] for n, above in enumerate(way) if (above / ".dvc").is_dir()), [folder])


def _named(dvcfile: Path, name: str, wdir: Path) -> list[RunningStage]:
    """The stage `name` of `dvcfile` (foreach and matrix stages by their family) if it runs in `wdir`."""
    return [RunningStage(name, stage.wdir, stage.deps) for stage in _stages_in(dvcfile.resolve())
            if stage.wdir == wdir and (stage.name == name or stage.name.endswith("@") and name.startswith(stage.name))]


def _dvc_folder() -> Path | None:
    """The folder the `dvc` process running this stage works in (Linux /proc): the first ancestor process
    without DVC_STAGE in its environment, which DVC sets for the stage's command only."""
    pid = os.getppid()
    for _ in range(6):
        try:
            if b"DVC_STAGE=" not in Path(f"/proc/{pid}/environ").read_bytes():
                return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


def _stages_in(dvcfile: Path) -> list[RunningStage]:
    try:
        loaded = yamlload.safe_load(dvcfile.read_text()) or {}
    except FileNotFoundError:
        return []
    except (OSError, yaml.YAMLError) as error:
        raise UntrackedInputError(f"cannot read {dvcfile} to check the stage's deps: {error}") from None
    stages = []
    for name, entry in (loaded.get("stages") or {}).items():
        if not isinstance(entry, dict):
            continue
        looped = "foreach" in entry or "matrix" in entry
        definition = entry.get("do", entry) if looped else entry
        wdir = (dvcfile.parent / str(definition.get("wdir", "."))).resolve()
        deps = tuple((wdir / dep).resolve() for dep in definition.get("deps") or []
                     if isinstance(dep, str) and "${" not in dep)
        # foreach and matrix stages run as name@<key>: any name of the family is this definition
        stages.append(RunningStage(f"{name}@" if looped else name, wdir, deps))
    return stages


def check_tracked(inputs: Iterable[Input | tuple[str, Path]]) -> None:
    """Refuse, under `dvc repro`, an input (an Input, or (what, path)) that none of the running stage's deps
    covers."""
    inputs = tuple(item if isinstance(item, Input) else Input(*item) for item in inputs)
    if inputs and os.environ.get("DVC_STAGE"):
        _check(inputs, os.environ["DVC_STAGE"], os.getcwd())


def check_code_tracked(code: dict[str, str]) -> None:
    """check_tracked for the files of a key's code part (`code_files`); nothing to find outside DVC."""
    if os.environ.get("DVC_STAGE"):
        check_tracked(_code_files(tuple(sorted(code))))


@lru_cache(maxsize=64)  # robustness builds a layer per cell, each with the same code: ~2 ms a check
def _check(inputs: tuple[Input, ...], addressing: str, cwd: str) -> None:
    stage = _find_stage(addressing, cwd)
    untracked = [item for item in inputs if not _covered(Path(item.path).resolve(), stage.deps)]
    if not untracked:
        return
    listed = ", ".join(f"{item.what} {_shown(Path(item.path).resolve(), stage.wdir)}" for item in untracked)
    suggested = dict.fromkeys(_shown(Path(item.path).resolve().parent if item.folder_dep else
                                     Path(item.path).resolve(), stage.wdir) for item in untracked)
    raise UntrackedInputError(
        f"{stage.name} reads {listed}, which none of its deps in dvc.yaml covers: DVC would not rerun it when that "
        f"changes, and its old outputs would stay. Add {', '.join(f'`- {dep}`' for dep in suggested)} to the "
        f"stage's deps")


def _covered(path: Path, deps: tuple[Path, ...]) -> bool:
    return any(path == dep or path.is_relative_to(dep) for dep in deps)


def _shown(path: Path, wdir: Path) -> str:
    """A dep as dvc.yaml would name it from the stage's wdir: through a symlink there if one leads to it (the
    detection project's `src`: DVC applies the project's .dvcignore only through it), absolute outside the
    repository."""
    for entry in sorted(wdir.iterdir()) if wdir.is_dir() else []:
        if entry.is_symlink() and entry.is_dir() and path.is_relative_to(entry.resolve()):
            return str(entry.relative_to(wdir) / path.relative_to(entry.resolve()))
    return os.path.relpath(path, wdir) if path.is_relative_to(_up_to_repository(wdir)[-1]) else str(path)


@lru_cache(maxsize=64)
def _code_files(names: tuple[str, ...]) -> tuple[Input, ...]:
    return tuple(code_files(names))


def code_files(code: Iterable[str]) -> list[Input]:
    """What a key's code part (its module names) reads that DVC must track: each module's file that is not
    installed (yours, and evalstack's: the template's dvc.yaml lists its folders, tests/test_layout.py checks the
    closures), and the folder a distribution of yours was installed from without `-e` (reinstalled after an edit,
    its key changes, but DVC sees no dep change)."""
    found = []
    for name in sorted(code):
        if name.startswith(INSTALLED):
            distribution = name[len(INSTALLED):]
        else:
            source = locate(name)
            if source is None:
                continue
            if not is_installed(source.path):
                found.append(Input("code", source.path, folder_dep=True))
                continue
            # followed by its file though installed: the pipeline or adapter module params name, in a package
            top = name.split(".")[0]
            distribution = None if top == PACKAGE else distribution_of(top)
        folder = _installed_from_folder(distribution) if distribution else None
        if folder is not None:
            found.append(Input(f"the package {distribution} installed from", folder))
    return list(dict.fromkeys(found))


def _installed_from_folder(distribution: str) -> Path | None:
    """The local folder a distribution was installed from without `-e` (pip's direct_url.json), else None."""
    from importlib import metadata

    try:
        text = metadata.distribution(distribution).read_text("direct_url.json")
        record = json.loads(text) if text else {}
    except (metadata.PackageNotFoundError, ValueError, OSError):
        return None
    url = urlparse(str(record.get("url", "")))
    if url.scheme != "file" or (record.get("dir_info") or {}).get("editable"):
        return None
    return Path(unquote(url.path))
