"""What code computes a result: a module's import closure, and a fingerprint of its source.

A cache key must change when the code that computes the result changes, without anyone
bumping a version string (Apache Hamilton keys a node on its code version, Hugging Face
`datasets` fingerprints the transform). The closure is found statically, from the
source: `import` and `from … import` statements anywhere in a module (inside functions
too), the parent packages every import executes, and — optionally — module names
written as strings (registries such as the adapters' that import by name). Blocks under
`if TYPE_CHECKING:` are skipped: they never run.

The fingerprint hashes each module's syntax tree with docstrings removed, so comments,
docstrings, blank lines and formatting do not count; anything else — a constant, a
default, an annotation that a dataclass turns into a field — does.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import itertools
import json
import os
import platform
import re
import site
import sys
import sysconfig
import types
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.modules import ModuleSource, locate, module_path

PACKAGE = "evalstack"
_MODULE_NAME = re.compile(rf"^{PACKAGE}(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def imported_names(path: Path, module: str, follow_strings: bool = False) -> set[str]:
    """Dotted names a source file imports (candidates: some are attributes, not modules)."""
    parsed = parsed_source(Path(path))
    is_package = Path(path).name == "__init__.py"
    names: set[str] = set()
    for entry in parsed.imports:
        if entry[0] == "import":
            names.add(entry[1])
            continue
        _, level, imported, aliases = entry[:4]
        base = _absolute(level, imported, module, is_package)
        if base is None:
            continue
        names.add(base)
        names.update(f"{base}.{alias}" for alias in aliases if alias != "*")
    if follow_strings:
        names.update(parsed.strings)
    return names


@dataclass(frozen=True)
class ParsedSource:
    """What the closure and the fingerprint need of one source file, from one parse of it."""

    digest: str  # sha256 of the syntax tree without docstrings
    # ("import", name, bound name) | ("from", level, module or "", (name, ...), (bound name, ...)), from code that
    # runs (TYPE_CHECKING aside)
    imports: tuple[tuple, ...]
    strings: tuple[str, ...]  # string constants in code that runs that look like evalstack module names
    names: tuple[str, ...] = ()  # modules imported by name: import_module("lab.helpers"), __import__("lab")
    read_at_import: tuple[str, ...] = ()  # names read while the module executes (not in function bodies)

    def to_json(self) -> dict:
        imports = [[item if not isinstance(item, tuple) else list(item) for item in entry] for entry in self.imports]
        return {"digest": self.digest, "imports": imports, "strings": list(self.strings), "names": list(self.names),
                "read_at_import": list(self.read_at_import)}

    @classmethod
    def from_json(cls, record: dict) -> "ParsedSource":
        imports = tuple(("import", str(e[1]), str(e[2])) if e[0] == "import"
                        else ("from", int(e[1]), str(e[2]), tuple(e[3]), tuple(e[4])) for e in record["imports"])
        return cls(str(record["digest"]), imports, tuple(record["strings"]), tuple(record["names"]),
                   tuple(record["read_at_import"]))


def _parse(path: Path) -> ParsedSource:
    # from the bytes, as the import system reads them: a coding declaration other than UTF-8 is honoured
    tree = ast.parse(path.read_bytes(), filename=str(path))
    imports: list[tuple] = []
    strings: set[str] = set()
    names: set[str] = set()
    for node in _executed_nodes(tree):
        if isinstance(node, ast.Import):
            imports.extend(("import", alias.name, alias.asname or alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.append(("from", node.level, node.module or "", tuple(alias.name for alias in node.names),
                            tuple(alias.asname or alias.name for alias in node.names)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.match(node.value):
            strings.add(node.value)
        elif isinstance(node, ast.Call) and _imports_by_name(node.func) and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) \
                and _DOTTED_NAME.match(node.args[0].value) and node.args[0].value != "__main__":
            names.add(node.args[0].value)
    for node in ast.walk(tree):  # docstrings go only now: a docstring naming a module is still such a string
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    read_at_import = _read_at_import(tree)
    digest = hashlib.sha256(ast.dump(tree, annotate_fields=False, include_attributes=False).encode()).hexdigest()
    return ParsedSource(digest, tuple(imports), tuple(sorted(strings)), tuple(sorted(names)),
                        tuple(sorted(read_at_import)))


def _read_at_import(tree: ast.AST) -> set[str]:
    """Names a module reads while it executes: its body and class bodies, decorators and default values, not the
    bodies of its functions (they read when called). `SCALE = helpers.FACTOR * 10` takes a value from helpers."""
    read: set[str] = set()
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(getattr(node, "decorator_list", []))
            stack.extend(node.args.defaults)
            stack.extend(default for default in node.args.kw_defaults if default is not None)
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            read.add(node.id)
        stack.extend(ast.iter_child_nodes(node))
    return read


def _imports_by_name(function: ast.expr) -> bool:
    """`import_module(…)`, `importlib.import_module(…)` or `__import__(…)`."""
    if isinstance(function, ast.Name):
        return function.id in ("import_module", "__import__")
    return isinstance(function, ast.Attribute) and function.attr == "import_module"


def _executed_nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node, except what sits under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(level: int, imported: str, module: str, is_package: bool) -> str | None:
    if not level:
        return imported
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    if not base:
        return None
    return ".".join(base + ([imported] if imported else []))


def import_closure(roots: Iterable[str | Path], follow_strings: bool = False,
                   package: str = PACKAGE) -> dict[str, ModuleSource]:
    """Every module of `package` that importing `roots` (module names, or script paths) executes, and every
    module of the user's own that a root outside `package` imports, directly or not.

    Parent packages count: importing `evalstack.cache.shardstore` runs
    `evalstack/__init__.py` and `evalstack/cache/__init__.py` first. A user's module (an adapter or a pipeline
    written outside evalstack) is followed into the modules it imports that are not installed: a helper module
    beside it is code that computes the result as much as the module itself, and an edit there must change
    the key. What is installed (the standard library, site-packages) is covered by the key's `runtime` part
    where it matters, and is not followed; evalstack's own modules never import a user's.
    """
    found: dict[str, ModuleSource] = {}
    pending: list[tuple[Path, str]] = []
    for root in roots:
        if isinstance(root, Path) or str(root).endswith(".py"):
            pending.append((Path(root), "__main__"))
        else:
            source = locate(str(root))
            if source is None:
                raise ModuleNotFoundError(f"no source for module {root}")
            _add(source, found, pending, package)
    while pending:
        path, name = pending.pop()
        users = not _in_package(name, package)
        candidates = imported_names(path, name, follow_strings)
        by_name = set(parsed_source(path).names) - candidates if users else set()
        for candidate in sorted(candidates | by_name):
            ours = _in_package(candidate, package)
            if not ours and not users:
                continue
            for prefix in _prefixes(candidate):
                source = locate(prefix)
                if source is None or source.name in found or not (ours or not is_installed(source.path)):
                    continue
                if candidate in by_name and not _parses(source.path):
                    continue  # a name that only looks like a module of yours (a file half written) is not one
                _add(source, found, pending, package)
    return found


def _parses(path: Path) -> bool:
    try:
        parsed_source(path)
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def _in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@lru_cache(maxsize=None)
def _installed_directories() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    directories = {paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib") if name in paths}
    directories.update(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        directories.add(site.getusersitepackages())
    # resolved, as the files they hold are compared (and as written: a venv's own path may be a link)
    return tuple(sorted({os.path.abspath(d) for d in directories} | {os.path.realpath(d) for d in directories}))


def is_installed(path: Path) -> bool:
    """Whether a module's file belongs to the Python installation rather than to the user's own code (the project,
    a folder on PYTHONPATH, an editable install's source, a package linked into site-packages from the
    project): where it resolves, under the standard library or site-packages, or in a folder whose installed
    distributions' records list it (`pip --target`, uv's cache, /nix/store)."""
    return _installed_file(os.path.realpath(path))


@lru_cache(maxsize=None)
def _installed_file(resolved: str) -> bool:
    if any(resolved.startswith(d + os.sep) for d in _installed_directories()):
        return True
    folder = os.path.dirname(resolved)
    while True:
        # Only a distribution that lists it: a project that merely sits in a folder holding some `*.dist-info`
        # (a deploy folder filled by `pip install -t .`) is still the user's code.
        if _holds_distributions(folder) and _listed(folder, os.path.relpath(resolved, folder).split(os.sep)[0]):
            return True
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent


@lru_cache(maxsize=None)
def _holds_distributions(folder: str) -> bool:
    try:
        return any(name.endswith(".dist-info") for name in os.listdir(folder))
    except OSError:
        return False


@lru_cache(maxsize=None)
def _listed(folder: str, top: str) -> bool:
    """Whether a distribution installed in `folder` lists `top` (a package folder, or a module file) among its files."""
    return next(_recording(folder, (f"{top}/", f"{top},")), None) is not None


def _recording(folder: str, starts: tuple[str, ...], named: str = "") -> Iterator[str]:
    """The `.dist-info` folders in `folder` (those whose name starts with `named`, lower-cased) whose RECORD has a
    line starting with one of `starts`, lazily, in name order."""
    for info in sorted(name for name in os.listdir(folder) if name.endswith(".dist-info")
                       and name.lower().startswith(named)):
        try:
            with open(os.path.join(folder, info, "RECORD"), encoding="utf-8") as record:
                if any(line.startswith(starts) for line in record):
                    yield info
        except OSError:
            continue


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: n + 1]) for n in range(len(parts))]


def _add(source: ModuleSource, found: dict[str, ModuleSource], pending: list, package: str) -> None:
    found[source.name] = source
    pending.append((source.path, source.name))
    for parent in _prefixes(source.name)[:-1]:
        parent_source = locate(parent)
        if parent_source is not None and parent_source.name not in found:
            _add(parent_source, found, pending, package)


def source_digest(path: Path) -> str:
    """sha256 of a module's syntax tree without docstrings (comments and layout never reach the tree)."""
    return parsed_source(path).digest


def parsed_source(path: Path) -> ParsedSource:
    """The file's parse, remembered while its (mtime_ns, size) are unchanged: in this process, and across
    processes in a sidecar file under `__pycache__/`, as Python remembers a module's bytecode (the same bet:
    a source edited without a change of its mtime or size is not seen by Python's import system either).

    Every stage process computes keys over some 30 modules: parsing each twice (imports, then the
    fingerprint) was 0.1–0.15 s of every stage's start-up. A sidecar records the Python that parsed (a
    syntax tree's dump may differ between versions) and the sha256 of this module's own bytes (the rules of
    the parse), and is ignored when either differs; a missing, damaged or unwritable one means a parse."""
    status = path.stat()
    return _parsed(_resolved(path), status.st_mtime_ns, status.st_size)


@lru_cache(maxsize=None)
def _parsed(path: Path, mtime_ns: int, size: int) -> ParsedSource:
    sidecar = sidecar_path(path)
    stamp = {"mtime_ns": mtime_ns, "size": size, "python": sys.version, "rules": _rules_digest()}
    try:
        record = json.loads(sidecar.read_text())
        if record["stamp"] == stamp:
            return ParsedSource.from_json(record)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass
    parsed = _parse(path)
    try:  # whole or absent (a fresh temp name per writer): two processes or threads may write it at once
        sidecar.parent.mkdir(exist_ok=True)
        atomic_write_bytes(sidecar, json.dumps({"stamp": stamp, **parsed.to_json()}).encode(), durable=False)
    except OSError:  # a read-only installation: it parses every time
        pass
    return parsed


def sidecar_path(path: Path) -> Path:
    return path.parent / "__pycache__" / f"{path.stem}.{sys.implementation.cache_tag}.evalstack-fingerprint.json"


@lru_cache(maxsize=1)
def _rules_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


@lru_cache(maxsize=None)
def _resolved(path: Path) -> Path:
    # resolve() stats every component of the path: per module, per key, it was most of a key's cost (a grid
    # computes two keys per cell). The stat above still sees every edit of the file itself.
    return path.resolve()


@lru_cache(maxsize=64)
def _cached_closure(roots: tuple[str, ...]) -> tuple[tuple[tuple[str, Path], ...], dict[str, str],
                                                    tuple[tuple[str, tuple[str, ...]], ...]]:
    """The closure of `roots`, the digests of its files when it was found (what the closure was read from), and
    the installed distributions the user's modules in it import."""
    modules = import_closure(roots)
    for root in roots:
        if root not in modules and (source := locate(root)) is not None:
            modules[root] = source
    closure = tuple(sorted((name, source.path) for name, source in modules.items()))
    return closure, {name: source_digest(path) for name, path in closure}, installed_imports(modules)


# A code part's entry for an installed distribution a user's module imports: "installed:<name>" → its identity.
INSTALLED = "installed:"


def installed_imports(modules: dict[str, ModuleSource]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The installed distributions (not the standard library) that the user's modules among `modules` import.

    Their code is not followed (it is not the user's to edit, and numpy alone is hundreds of files), but a
    reinstall of one changes what the user's module computes: the lab's own package installed without `-e`,
    reinstalled after an edit, keeps its version number. So the key names each by `installed_identity`: its
    version and the sha256 of every file it installed, as its RECORD lists them. evalstack's own modules
    import frameworks whose versions are the key's `runtime` part where they matter."""
    found: dict[str, set[str]] = {}  # distribution → the top-level modules of it imported
    for name, source in modules.items():
        if _in_package(name, PACKAGE):
            continue
        for candidate in imported_names(source.path, name):
            top = candidate.split(".")[0]
            if top in modules or _in_package(top, PACKAGE):
                continue
            located = locate(top)
            if located is None or not is_installed(located.path) or _in_standard_library(located.path):
                continue
            distribution = distribution_of(top)
            if distribution is not None:
                found.setdefault(distribution, set()).add(top)
    return tuple(sorted((distribution, tuple(sorted(tops))) for distribution, tops in found.items()))


def _in_standard_library(path: Path) -> bool:
    file = os.path.abspath(path)
    standard, site_packages = _library_directories()
    return any(file.startswith(d + os.sep) for d in standard) and not any(
        file.startswith(d + os.sep) for d in site_packages)


@lru_cache(maxsize=1)
def _library_directories() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the standard library's directories, site-packages'), as sysconfig names them."""
    paths = sysconfig.get_paths()
    return tuple(os.path.abspath(paths[n]) for n in ("stdlib", "platstdlib") if n in paths), tuple(
        os.path.abspath(paths[n]) for n in ("purelib", "platlib") if n in paths)


@lru_cache(maxsize=None)
def distribution_of(top: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.distribution(top).metadata["Name"]  # most distributions are named as they import
    except metadata.PackageNotFoundError:
        pass
    providers = _top_level_distributions().get(top) or []
    return providers[0] if providers else None


@lru_cache(maxsize=1)
def _top_level_distributions() -> dict[str, list[str]]:
    from importlib import metadata

    return metadata.packages_distributions()  # ~0.5 s: only for a module imported under another name (yaml)


def installed_identity(distribution: str) -> str:
    """`<version> <sha256 of the files it installed>` of an installed distribution ("" when it is not installed):
    the sha256 of its RECORD's entries for its own files. Left out: its metadata (who installed it: pip or uv),
    and files outside its folders (scripts whose first line names the venv), so identical code installed in
    another venv is the same."""
    from importlib import metadata

    try:
        found = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return ""
    folder = getattr(found, "_path", None)  # the .dist-info folder (a PathDistribution's)
    try:
        status = os.stat(os.path.join(folder, "RECORD")) if isinstance(folder, (str, os.PathLike)) else None
    except OSError:
        status = None
    stamp = (str(folder), status.st_mtime_ns, status.st_size) if status is not None else None
    if stamp is not None and stamp in _IDENTITIES:
        return _IDENTITIES[stamp]
    lines = sorted(line for line in (found.read_text("RECORD") or "").splitlines()
                   if _own_hashed_file(line))
    identity = f"{found.version} {hashlib.sha256(chr(10).join(lines).encode()).hexdigest()}"
    if stamp is not None:
        _IDENTITIES[stamp] = identity
    return identity


_IDENTITIES: dict[tuple[str, int, int], str] = {}  # (RECORD's folder, mtime_ns, size) → identity


def _own_hashed_file(line: str) -> bool:
    path, _, rest = line.partition(",")
    digest = rest.partition(",")[0]
    return bool(digest) and not path.startswith("../") and ".dist-info/" not in path


@lru_cache(maxsize=None)
def runtime_part(*distributions: str) -> dict[str, str]:
    """The `runtime` part of a cache key: {distribution: installed version} of the libraries that compute a
    result besides evalstack's own code (Pillow's resampling, the model's framework). Another version may give
    other bits, and with a shared store (`store.url`) another machine's result would be reused as this one's.
    Read from the installed metadata: nothing is imported. A library that is not installed is "absent".

    Another distribution may install the same import package (onnxruntime-gpu and onnxruntime both write
    `onnxruntime/`, opencv-python and opencv-python-headless `cv2/`; the last one installed is what runs). Where
    one does, beside the named one or instead of it, the value names every such distribution with its version,
    so an upgrade of any of them is another key. Where none does (the usual case) the value is the version."""
    from importlib import metadata

    def version(name: str) -> str:
        try:
            own = metadata.version(name)
        except metadata.PackageNotFoundError:
            own = None
        others = _other_providers(name)
        if not others:
            return own if own is not None else "absent"
        named = [f"{_normalised(name)} {own}"] if own is not None else []
        return " + ".join(sorted(named + others))

    return {name: version(name) for name in distributions}


# The import package of a distribution whose name does not say it (default: the name with "-" as "_").
IMPORT_PACKAGES = {"pillow": "PIL", "opencv-python-headless": "cv2", "tensorflow-cpu": "tensorflow",
                   "scikit-learn": "sklearn"}


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _other_providers(distribution: str) -> list[str]:
    """"<name> <version>" of each installed distribution other than `distribution` whose files hold its import
    package: the distributions in the package's folder named like it (onnxruntime_gpu for onnxruntime,
    opencv_python for opencv-python-headless: the same first word) whose RECORD lists the package's
    `__init__.py`. The package is found where an import would find it, without importing it. Best effort: where
    the layout says nothing (an editable or conda install, a namespace package), none."""
    import importlib.util
    from importlib import metadata

    package = IMPORT_PACKAGES.get(distribution, distribution.replace("-", "_"))
    try:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None or not spec.submodule_search_locations:
            return []
        folder, own = Path(spec.origin).parent.parent, _normalised(distribution)
        found = []
        for entry in _recording(str(folder), (f"{package}/__init__.py,",), own.split("-")[0]):
            candidate = metadata.PathDistribution(folder / entry)
            name = _normalised(str(candidate.metadata["Name"] or entry.split("-")[0]))
            if name != own:
                found.append(f"{name} {candidate.version}")
        return found
    except Exception:  # noqa: BLE001 (a malformed RECORD or a finder of the user's must not stop every stage)
        return []


class StaleCodeError(RuntimeError):
    """A module's file changed after this process loaded it: the code that runs is not the code a key names."""


# What this process runs, the only witness of it (Python keeps no copy of the source it ran): file → its
# executions, oldest first, as (load number, digest of its source then). Noted by an audit hook at every
# execution of a module's code (an import, a reload, whatever loader ran it); a module loaded before the hook was
# in place is noted as its file was then, with load number 0. Kept across a reload of this module (a reload runs
# it again in the same namespace).
_EXECUTED: dict[str, list[tuple[int, str]]] = globals().get("_EXECUTED", {})
_LOAD_NUMBERS = globals().get("_LOAD_NUMBERS", itertools.count(1))
_RELOADS: list[str] = globals().get("_RELOADS", [])  # files executed more than once


def _file_of(name: str) -> str | None:
    module = sys.modules.get(name)
    if module is None:
        return None
    origin = getattr(getattr(module, "__spec__", None), "origin", None) or getattr(module, "__file__", None)
    return os.path.abspath(origin) if isinstance(origin, str) else None


def _ran(name: str) -> tuple[int, str] | None:
    """(load number, digest) of what module `name`, as loaded here, runs; None if not known."""
    file = _file_of(name)
    history = _EXECUTED.get(file) if file is not None else None
    return history[-1] if history else None


def _check_loaded(name: str, path: Path, digest: str) -> None:
    """Refuse a key that names other code than what this process runs.

    A notebook imports the user's adapter module, runs it, then the user edits the file and runs again
    without reloading: the key would name the edited code while the old code computes the result, and the
    store would keep that result under the new code's key for every later run (a `dvc repro` too). Also a
    file edited while a stage runs, or between a notebook's import and its first run."""
    ran = _ran(name)
    if ran is None:
        file = _file_of(name)
        if file is not None:  # loaded some way no witness saw: noted as its file is now
            _EXECUTED[file] = [(0, digest)]
        return
    if ran[1] != digest:
        raise StaleCodeError(
            f"{_shown(name, path)} changed after this process loaded {name}: the code running here is not the "
            f"code a cache key would name. Reload it and make its objects again (in a notebook: restart the "
            f"kernel), or restart the workers that loaded it, and run again")


def _value_imports(path: Path, name: str, modules: set[str] | Mapping[str, object]) -> set[str]:
    """The modules among `modules` that `name` took values from: `from helpers import FACTOR`, or a module bound
    by `import helpers` / `from lab import helpers` and read while `name` executed (`SCALE = helpers.FACTOR`). A
    reload of one leaves `name` holding the old values; a module only read inside functions is the reloaded one
    (a reload updates the module object in place)."""
    parsed = parsed_source(path)
    read = set(parsed.read_at_import)
    is_package = path.name == "__init__.py"
    found = set()
    for entry in parsed.imports:
        if entry[0] == "import":
            if entry[2] in read:
                found.update(prefix for prefix in _prefixes(entry[1]) if prefix in modules)
            continue
        base = _absolute(entry[1], entry[2], name, is_package)
        if base is None:
            continue
        for alias, bound in zip(entry[3], entry[4]):
            submodule = f"{base}.{alias}"
            if submodule in modules:
                if bound in read:
                    found.add(submodule)
            elif base in modules:
                found.add(base)
    return found - {name}


def _changed_since(imported: str, name: str, modules: set[str] | Mapping[str, object]) -> bool:
    """Whether module `imported` holds other values now than when module `name` was executed and took from it:
    other code in its execution then (the one before `name`'s, or the first, when it ran while `name` was
    executing) and now, or, the same, but taking other values in turn (`mid` computed from a reloaded
    `helpers`). True when not known."""
    ran = _ran(name)
    if ran is None or not _EXECUTED.get(_file_of(imported) or ""):
        return True
    return _state(imported, ran[0], modules, frozenset()) != _state(imported, None, modules, frozenset())


def _state(name: str, before: int | None, modules: set[str] | Mapping[str, object], seen: frozenset) -> tuple:
    """What module `name` held as of load number `before` (None: now): the digest of its execution then, and the
    same of each module it took values from, as of that execution."""
    file = _file_of(name)
    history = _EXECUTED.get(file or "") or []
    if not history:
        return (name,)
    number, digest = history[-1] if before is None else \
        next((entry for entry in reversed(history) if entry[0] < before), history[0])
    if name in seen or not file or not os.path.isfile(file):
        return (name, digest)
    taken = sorted(_value_imports(Path(file), name, modules))
    return (name, digest, tuple(_state(other, number, modules, seen | {name}) for other in taken))


def _reloaded_any(name: str, modules: set[str] | Mapping[str, object]) -> bool:
    """Whether module `name`, or a module it took values from (and so on), was executed more than once."""
    pending, seen = [name], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        file = _file_of(current)
        if file and len(_EXECUTED.get(file) or []) > 1:
            return True
        if file and os.path.isfile(file) and not is_installed(Path(file)):
            pending.extend(_value_imports(Path(file), current, modules))
    return False


def _check_bindings(closure: tuple[tuple[str, Path], ...]) -> None:
    """Refuse a module that took values from a module executed again after it with other code: it still holds
    the old values while the key names the new file. A reload that changed nothing that runs (a comment, the
    same file under two names) is no change."""
    names = {name for name, _ in closure}
    for name, path in closure:
        ran = _ran(name)
        if ran is None or path.suffix != ".py":
            continue
        for imported in sorted(_value_imports(path, name, names)):
            if _reloaded_any(imported, names) and _changed_since(imported, name, names):
                raise StaleCodeError(
                    f"{imported} was loaded again after {name} took names from it, and holds other values now (its "
                    f"code, or a module it took from, changed): {name} still holds the old ones. Reload {name} too "
                    f"and make its objects again (in a "
                    f"notebook: restart the kernel)")


def _loaded_as(name: str) -> str | None:
    """The digest of what this process runs for module `name`, if known."""
    ran = _ran(name)
    return ran[1] if ran is not None else None


# a key's code (sorted module → digest pairs) → where each module is here, once its files were checked
_CHECKED_HERE: dict[tuple[tuple[str, str], ...], tuple[tuple[str, Path], ...]] = {}


def check_code_runs(code: dict[str, str]) -> None:
    """Where a shard is computed for a key made in another process (a Dask worker, a pool's worker): the
    modules the key names must be that code here, in their files and as this process loaded them. A worker
    that stays up keeps what it imported first, and after an edit would compute the old code's bytes under
    the new code's key. Call it before and after the computation: after, it also notes the modules the
    computation imported, so that a later edit of them is seen."""
    installed = {name: identity for name, identity in code.items() if name.startswith(INSTALLED)}
    expected = tuple(sorted((name, digest) for name, digest in code.items() if name not in installed))
    for name, identity in installed.items():
        _check_installed(name[len(INSTALLED):], identity, worker=True)
    located = _CHECKED_HERE.get(expected)
    if located is None:
        found = []
        for name, digest in expected:
            if _loaded_as(name) == digest:  # loaded here as the key says: a file saved since changes nothing that runs
                found.append((name, Path(getattr(sys.modules[name], "__file__", name))))
                continue
            source = locate(name)
            if source is None or source_digest(source.path) != digest:
                where = source.path if source is not None else "nowhere on sys.path"
                raise StaleCodeError(
                    f"{name} is other code in this process ({where}, on {platform.node()}) than in the process that "
                    f"made the key: a worker must run the project's code (start Dask workers with the project's "
                    f"src/ on their PYTHONPATH, and restart them after an edit)")
            found.append((name, source.path))
        located = _CHECKED_HERE[expected] = tuple(found)
    for (name, path), (_, digest) in zip(located, expected):
        # A module first recorded now is recorded as its file is now (not as the key says), so that a module the
        # computation imports from a file edited since the key was made is refused, not recorded as the key's.
        if name in sys.modules and _ran(name) is None:
            _check_loaded(name, path, source_digest(path) if path.suffix == ".py" else digest)
        _check_loaded(name, path, digest)


def code_part(*roots: str) -> dict[str, str]:
    """The `code` part of a cache key: {module: digest} over the import closure of `roots`.

    The closure is found once per process, and again after an edit of one of its files; digests are re-read
    whenever a file's stat changes, and a module this process has loaded must still be what its file says
    (`StaleCodeError`)."""
    closure, found_in, installed = _cached_closure(tuple(roots))
    try:
        part = {name: source_digest(path) for name, path in closure}
    except OSError:  # a file of it deleted or renamed: the closure is another now
        part = {}
    if part != found_in:
        # An edit since the closure was found may import another module (a notebook's long-lived process, a
        # worker): find it again, and locate modules again (a helper file may have been created since).
        _cached_closure.cache_clear()
        locate.cache_clear()
        closure, found_in, installed = _cached_closure(tuple(roots))
        part = dict(found_in)
    for name, path in closure:
        _check_loaded(name, path, part[name])
    if _RELOADS:
        _check_bindings(closure)
    for distribution, tops in installed:
        part[INSTALLED + distribution] = identity = installed_identity(distribution)
        if any(top in sys.modules for top in tops):  # loaded here: what runs is what was installed then
            _check_installed(distribution, identity)
    return part


# distribution → its identity when a key first named it in this process
_INSTALLED_AS: dict[str, str] = globals().get("_INSTALLED_AS", {})


def _check_installed(distribution: str, identity: str, worker: bool = False) -> None:
    """A distribution reinstalled while this process runs its old modules (a notebook's kernel, a worker) would
    compute the old code's results under the new install's key; a worker with another install, other ones."""
    if worker and installed_identity(distribution) != identity:
        raise StaleCodeError(f"{distribution} is another install in this process (on {platform.node()}) than in "
                             f"the process that made the key: install the same version on the workers")
    seen = _INSTALLED_AS.setdefault(distribution, identity)
    if seen != identity:
        raise StaleCodeError(f"{distribution} was installed again after this process loaded it: the code running "
                             f"here is not the code a cache key would name. Restart (in a notebook: the kernel), "
                             f"or restart the workers, and run again")


def current_digests(recorded: dict[str, str]) -> dict[str, str]:
    """What the modules a key recorded digest to now ("" for a module that no longer exists)."""
    now = {}
    for name in recorded:
        if name.startswith(INSTALLED):
            now[name] = installed_identity(name[len(INSTALLED):])
            continue
        source = locate(name)
        now[name] = source_digest(source.path) if source is not None else ""
    return now


def _shown(name: str, path: Path) -> str:
    shown = module_path(name)
    return shown if shown != name else str(path)


def defining_module(cls: type) -> str:
    """The module that defines `cls`; a class written in a script cannot be fingerprinted, and an object made
    before its module was reloaded runs the old class while a key would name the reloaded module's code."""
    if cls.__module__ == "__main__":
        main = sys.modules.get("__main__")
        raise ValueError(f"{cls.__name__} is defined in a script ({getattr(main, '__file__', '?')}); "
                         "move it into a module so its code can be part of cache keys")
    if _reloaded_since(cls):
        raise StaleCodeError(f"{cls.__module__}.{cls.__qualname__} was reloaded after this object was made: it "
                             f"runs the old class's code. Make the object again from the reloaded module")
    for base in cls.__mro__[1:]:
        if _reloaded_since(base) and _changed_since(base.__module__, cls.__module__, sys.modules):
            raise StaleCodeError(f"{base.__module__} was reloaded after {cls.__module__}.{cls.__qualname__} was "
                                 f"defined: the class still derives from the old {base.__qualname__}. Reload "
                                 f"{cls.__module__} too and make the object again")
    check_functions_in_closure(cls, cls.__module__)
    return cls.__module__


def check_functions_in_closure(owner: object, module: str) -> None:
    """Refuse code that runs as `owner`'s (a class: its and its bases' methods; an object: functions set on it)
    but is not in the code a key names for it, the import closure of `module`: a method replaced in a notebook
    (`TorchAdapter._forward = tta`) or from another module left the key naming the class's own code, and its
    results were served for the original's and the original's for it (found by a hunt)."""
    closure: dict[str, str] | None = None
    for name, function in _functions_of(owner):
        for origin in _origins(function):
            if origin == module:
                continue
            if origin not in (None, "__main__"):
                if _installed_module(origin):
                    continue  # an installed library's: its version is in the key's runtime part
                closure = closure if closure is not None else code_part(module)
                if origin in closure:
                    continue
            where = "a script or notebook" if origin in (None, "__main__") else f"module {origin}"
            raise ValueError(f"{name} is a function from {where}, set on {_described(owner)} after it was defined, "
                             f"or reached from it by a name {module} does not import: its code is not in the cache "
                             f"keys of {module}'s code. Define a subclass in a module instead, so that its code is "
                             f"part of the keys")


def _installed_module(name: str) -> bool:
    """Whether the loaded module `name` is an installed library's."""
    file = getattr(sys.modules.get(name), "__file__", None)
    return file is not None and _installed_path(file)


@lru_cache(maxsize=None)
def _installed_path(file: str) -> bool:
    # per file as given: a key check asks for every method of a class, and is_installed resolves the real path
    return is_installed(Path(file))


def _origins(function: object) -> Iterator[str | None]:
    """The modules a function's code comes from: where it says it was defined, and where it was compiled (a
    `functools.wraps` wrapper copies the wrapped function's `__module__`, not its own), for it and every function
    it wraps (`__wrapped__`)."""
    seen: set[int] = set()
    while function is not None and id(function) not in seen:
        seen.add(id(function))
        declared = getattr(function, "__module__", None)
        yield declared
        compiled = getattr(function, "__globals__", {}).get("__name__")
        if compiled is not None and compiled != declared:  # attrs' generated methods have globals without a name
            yield compiled
        function = getattr(function, "__wrapped__", None)


def _functions_of(owner: object) -> Iterable[tuple[str, object]]:
    """(qualified name, function) of the code `owner` runs: a class's methods, its bases' (but not a library's),
    properties' accessors, static and class methods and the other method descriptors of functools; for an
    object, the functions, bound methods and partials set on it."""
    if isinstance(owner, type):
        for cls in owner.__mro__:
            if cls is object or cls.__module__ == "builtins":
                continue
            for name, value in vars(cls).items():
                for function in _unwrapped(value):
                    yield f"{cls.__qualname__}.{name}", function
        return
    for name, value in vars(owner).items() if hasattr(owner, "__dict__") else ():
        if isinstance(value, (types.FunctionType, types.MethodType, functools.partial)):
            for function in _unwrapped(value):
                yield f"{type(owner).__qualname__} object's {name}", function


def _unwrapped(value: object) -> list[object]:
    """The plain functions behind a class attribute or an object's attribute."""
    if isinstance(value, (staticmethod, classmethod, types.MethodType)):
        return _unwrapped(value.__func__)
    if isinstance(value, property):
        return [function for accessor in (value.fget, value.fset, value.fdel) for function in _unwrapped(accessor)]
    if isinstance(value, (functools.partial, functools.partialmethod, functools.cached_property)):
        return _unwrapped(value.func)
    if isinstance(value, functools.singledispatchmethod):
        return [function for registered in value.dispatcher.registry.values() for function in _unwrapped(registered)]
    return [value] if isinstance(value, types.FunctionType) else []


def _described(owner: object) -> str:
    return f"class {owner.__module__}.{owner.__qualname__}" if isinstance(owner, type) else \
        f"a {type(owner).__qualname__} object"


def _reloaded_since(cls: type) -> bool:
    """Whether the module that defined `cls` now holds another class under its name (it was executed again)."""
    defined: object = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        defined = getattr(defined, part, None)
    return isinstance(defined, type) and defined is not cls and defined.__qualname__ == cls.__qualname__


def _witness(event: str, args: tuple) -> None:
    """An audit hook: at every execution of a module's code from a file of the user's own (evalstack's
    included), note the digest of that file, whatever loaded it (Python's loaders, an editable install's
    finder, another library's import hook). An audit hook must never fail what it watches."""
    if event != "exec":
        return
    try:
        code = args[0]
        filename = code.co_filename
        if code.co_name != "<module>" or not filename.endswith(".py"):
            return
        filename = os.path.abspath(filename)
        if is_installed(Path(filename)):
            return
        digest = parsed_source(Path(filename)).digest
        history = _EXECUTED.setdefault(filename, [])
        history.append((next(_LOAD_NUMBERS), digest))
        if len(history) == 2:
            _RELOADS.append(filename)
    except Exception:  # noqa: BLE001 - a file that cannot be read or parsed is the loader's to report
        return


def _witness_loads() -> None:
    """From now on, every module of the user's own code this process executes is noted as executed. Those loaded
    before (the few modules this one's import needs, a module of yours imported before evalstack) are noted as
    their files are now: an edit of one between its import and now is not seen."""
    if globals().get("_WITNESSING"):
        return  # this module was reloaded: the hook (which cannot be removed) is in place
    for module in list(sys.modules.values()):
        origin = getattr(getattr(module, "__spec__", None), "origin", None)
        if not isinstance(origin, str) or not origin.endswith(".py") or os.path.abspath(origin) in _EXECUTED \
                or is_installed(Path(origin)):
            continue
        try:
            _EXECUTED[os.path.abspath(origin)] = [(0, parsed_source(Path(origin)).digest)]
        except (OSError, SyntaxError, ValueError):
            continue
    sys.addaudithook(_witness)
    globals()["_WITNESSING"] = True


_witness_loads()
