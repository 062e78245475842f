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
import hashlib
import importlib.util
import json
import platform
import re
import site
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from importlib.machinery import (
    BYTECODE_SUFFIXES,
    EXTENSION_SUFFIXES,
    SOURCE_SUFFIXES,
    ExtensionFileLoader,
    FileFinder,
    SourceFileLoader,
    SourcelessFileLoader,
)
from pathlib import Path
from typing import Iterable

from evalstack.core.atomic import atomic_write_bytes

PACKAGE = "evalstack"
_MODULE_NAME = re.compile(rf"^{PACKAGE}(\.[A-Za-z_][A-Za-z0-9_]*)+$")


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
    if not origin or not origin.endswith(".py"):
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


def imported_names(path: Path, module: str, follow_strings: bool = False) -> set[str]:
    """Dotted names a source file imports (candidates: some are attributes, not modules)."""
    parsed = parsed_source(Path(path))
    is_package = Path(path).name == "__init__.py"
    names: set[str] = set()
    for entry in parsed.imports:
        if entry[0] == "import":
            names.add(entry[1])
            continue
        _, level, imported, aliases = entry
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
    # ("import", name) | ("from", level, module or "", (name, ...)), from code that runs (TYPE_CHECKING aside)
    imports: tuple[tuple, ...]
    strings: tuple[str, ...]  # string constants in code that runs that look like evalstack module names

    def to_json(self) -> dict:
        imports = [list(entry[:3]) + ([list(entry[3])] if len(entry) > 3 else []) for entry in self.imports]
        return {"digest": self.digest, "imports": imports, "strings": list(self.strings)}

    @classmethod
    def from_json(cls, record: dict) -> "ParsedSource":
        imports = tuple(("import", str(e[1])) if e[0] == "import" else ("from", int(e[1]), str(e[2]), tuple(e[3]))
                        for e in record["imports"])
        return cls(str(record["digest"]), imports, tuple(record["strings"]))


def _parse(path: Path) -> ParsedSource:
    tree = ast.parse(path.read_text(), filename=str(path))
    imports: list[tuple] = []
    strings: set[str] = set()
    for node in _executed_nodes(tree):
        if isinstance(node, ast.Import):
            imports.extend(("import", alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.append(("from", node.level, node.module or "", tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.match(node.value):
            strings.add(node.value)
    for node in ast.walk(tree):  # docstrings go only now: a docstring naming a module is still such a string
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    digest = hashlib.sha256(ast.dump(tree, annotate_fields=False, include_attributes=False).encode()).hexdigest()
    return ParsedSource(digest, tuple(imports), tuple(sorted(strings)))


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
        for candidate in sorted(imported_names(path, name, follow_strings)):
            ours = _in_package(candidate, package)
            if not ours and not users:
                continue
            for prefix in _prefixes(candidate):
                source = locate(prefix)
                if source is None or source.name in found:
                    continue
                if ours or not is_installed(source.path):
                    _add(source, found, pending, package)
    return found


def _in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@lru_cache(maxsize=None)
def _installed_directories() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    directories = {paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib") if name in paths}
    directories.update(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        directories.add(site.getusersitepackages())
    return tuple(sorted({Path(directory).resolve() for directory in directories}))


def is_installed(path: Path) -> bool:
    """Whether a module's file belongs to the Python installation (the standard library, site-packages) rather
    than to the user's own code (the project, a folder on PYTHONPATH, an editable install's source)."""
    return _folder_is_installed(str(Path(path).parent))


@lru_cache(maxsize=None)
def _folder_is_installed(folder: str) -> bool:
    # by folder: a process asks about every module it has loaded, a few hundred files in a few dozen folders
    resolved = Path(folder).resolve()
    return any(resolved.is_relative_to(directory) for directory in _installed_directories())


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
def _cached_closure(roots: tuple[str, ...]) -> tuple[tuple[tuple[str, Path], ...], dict[str, str]]:
    """The closure of `roots`, and the digests of its files when it was found (what the closure was read from)."""
    modules = import_closure(roots)
    for root in roots:
        if root not in modules and (source := locate(root)) is not None:
            modules[root] = source
    closure = tuple(sorted((name, source.path) for name, source in modules.items()))
    return closure, {name: source_digest(path) for name, path in closure}


@lru_cache(maxsize=None)
def runtime_part(*distributions: str) -> dict[str, str]:
    """The `runtime` part of a cache key: {distribution: installed version} of the libraries that compute a
    result besides evalstack's own code (Pillow's resampling, the model's framework). Another version may give
    other bits, and with a shared store (`store.url`) another machine's result would be reused as this one's.
    Read from the installed metadata: nothing is imported. A library that is not installed is "absent"."""
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    return {name: version(name) for name in distributions}


class StaleCodeError(RuntimeError):
    """A module's file changed after this process loaded it: the code that runs is not the code a key names."""


# module → (its __spec__, the digest of the source it runs): noted when the module is loaded (below), or, for a
# module loaded some other way, when a key first covers it. Python keeps no copy of the source it ran, so this
# is the only witness of it; a reload gives the module a new __spec__. A digest of "" is a module whose file
# changed after it was loaded, before this module could note it.
_LOADED_AS: dict[str, tuple[object, str]] = {}


def _check_loaded(name: str, path: Path, digest: str) -> None:
    """Refuse a key that names other code than what this process runs.

    A notebook imports the user's adapter module, runs it, then the user edits the file and runs again
    without reloading: the key would name the edited code while the old code computes the result, and the
    store would keep that result under the new code's key for every later run (a `dvc repro` too). Also a
    file edited while a stage runs, or between a notebook's import and its first run. What each module runs is
    noted when it is loaded (`_WitnessedSourceLoader`)."""
    module = sys.modules.get(name)
    if module is None:
        return
    spec = getattr(module, "__spec__", None)
    seen = _LOADED_AS.get(name)
    if seen is None or seen[0] is not spec:  # loaded some other way, or reloaded since: it runs what the file says
        _LOADED_AS[name] = (spec, digest)
    elif seen[1] != digest:
        raise StaleCodeError(
            f"{_shown(name, path)} changed after this process loaded {name}: the code running here is not the "
            f"code a cache key would name. Reload it and make its objects again (in a notebook: restart the "
            f"kernel), or restart the workers that loaded it, and run again")


def _loaded_as(name: str) -> str | None:
    """The digest this process recorded for the module as loaded, while that module object is the one loaded."""
    seen = _LOADED_AS.get(name)
    module = sys.modules.get(name)
    return seen[1] if seen is not None and module is not None and seen[0] is getattr(module, "__spec__", None) else None


# a key's code (sorted module → digest pairs) → where each module is here, once its files were checked
_CHECKED_HERE: dict[tuple[tuple[str, str], ...], tuple[tuple[str, Path], ...]] = {}


def check_code_runs(code: dict[str, str]) -> None:
    """Where a shard is computed for a key made in another process (a Dask worker, a pool's worker): the
    modules the key names must be that code here, in their files and as this process loaded them. A worker
    that stays up keeps what it imported first, and after an edit would compute the old code's bytes under
    the new code's key. Call it before and after the computation: after, it also notes the modules the
    computation imported, so that a later edit of them is seen."""
    expected = tuple(sorted(code.items()))
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
        if name in sys.modules and _LOADED_AS.get(name) is None:
            _check_loaded(name, path, source_digest(path) if path.suffix == ".py" else digest)
        _check_loaded(name, path, digest)


def code_part(*roots: str) -> dict[str, str]:
    """The `code` part of a cache key: {module: digest} over the import closure of `roots`.

    The closure is found once per process, and again after an edit of one of its files; digests are re-read
    whenever a file's stat changes, and a module this process has loaded must still be what its file says
    (`StaleCodeError`)."""
    closure, found_in = _cached_closure(tuple(roots))
    part = {name: source_digest(path) for name, path in closure}
    if part != found_in:
        # An edit since the closure was found may import another module (a notebook's long-lived process, a
        # worker): find it again, and locate modules again (a helper file may have been created since).
        _cached_closure.cache_clear()
        locate.cache_clear()
        closure, found_in = _cached_closure(tuple(roots))
        part = dict(found_in)
    for name, path in closure:
        _check_loaded(name, path, part[name])
    return part


def current_digests(recorded: dict[str, str]) -> dict[str, str]:
    """What the modules a key recorded digest to now ("" for a module that no longer exists)."""
    now = {}
    for name in recorded:
        source = locate(name)
        now[name] = source_digest(source.path) if source is not None else ""
    return now


def module_path(name: str) -> str:
    """How a message names a module: its file under src/ (`src/evalstack/preprocess/regions.py`)."""
    source = locate(name)
    if source is not None and "src" in source.path.parts:
        parts = source.path.parts
        return "/".join(parts[len(parts) - 1 - parts[::-1].index("src"):])
    return name


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
    defined: object = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        defined = getattr(defined, part, None)
    if isinstance(defined, type) and defined is not cls and defined.__qualname__ == cls.__qualname__:
        raise StaleCodeError(f"{cls.__module__}.{cls.__qualname__} was reloaded after this object was made: it "
                             f"runs the old class's code. Make the object again from the reloaded module")
    return cls.__module__


class _WitnessedSourceLoader(SourceFileLoader):
    """Python's own source loader, which also notes the digest of the source it is about to run: the witness
    `_check_loaded` compares a file with. Without it, a module imported, then edited before the first key
    covers it (a notebook's `import` at the top, an edit, then the run) would be noted as the edited file."""

    def exec_module(self, module) -> None:
        try:
            digest: str | None = parsed_source(Path(self.path)).digest
        except (OSError, SyntaxError, ValueError):  # the loader itself says what is wrong with the file
            digest = None
        super().exec_module(module)
        if digest is not None:
            _LOADED_AS[module.__spec__.name] = (module.__spec__, digest)


def _witness_path_hook(entry: str) -> FileFinder:
    """The import system's finder for a folder of the user's own code (evalstack's included), loading its
    sources through `_WitnessedSourceLoader`; installed folders are left to Python's own hook."""
    folder = Path(entry or ".")
    if not folder.is_dir() or _folder_is_installed(str(folder)):
        raise ImportError(f"{entry!r}: left to Python's own finder")
    return FileFinder(entry, (_WitnessedSourceLoader, SOURCE_SUFFIXES), (ExtensionFileLoader, EXTENSION_SUFFIXES),
                      (SourcelessFileLoader, BYTECODE_SUFFIXES))


def _pyc_says_unchanged(module, path: Path) -> bool:
    """Whether the bytecode Python wrote when it last compiled `path` still matches its (mtime, size): if not,
    the file changed after it was compiled, that is after this process loaded it. Tells nothing (True) while
    Python writes no bytecode (a stale .pyc is then the rule), or for a missing or hash-based .pyc."""
    if sys.dont_write_bytecode:
        return True
    cached = getattr(module, "__cached__", None)
    try:
        header = Path(cached).read_bytes()[:16] if cached else b""
        status = path.stat()
    except OSError:
        return True
    if len(header) < 16 or int.from_bytes(header[4:8], "little") != 0:
        return True
    return (int.from_bytes(header[8:12], "little"), int.from_bytes(header[12:16], "little")) == (
        int(status.st_mtime) & 0xFFFFFFFF, status.st_size & 0xFFFFFFFF)


def _witness_loads() -> None:
    """From now on, every module of the user's own code this process loads is noted as loaded. Those loaded
    before (the few evalstack modules this one's import needs, a module of yours imported before evalstack)
    are noted as their files are now, unless their bytecode says the file changed since it was compiled."""
    if any(getattr(hook, "__qualname__", "") == _witness_path_hook.__qualname__ for hook in sys.path_hooks):
        return  # this module was reloaded: the hook is in place
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        origin = getattr(spec, "origin", None)
        if name in _LOADED_AS or spec is None or not origin or not origin.endswith(".py") \
                or is_installed(Path(origin)):
            continue
        # one being loaded now (yours, whose first line imports evalstack) was read a moment ago
        unchanged = getattr(spec, "_initializing", False) or _pyc_says_unchanged(module, Path(origin))
        try:
            digest = parsed_source(Path(origin)).digest if unchanged else ""
        except (OSError, SyntaxError, ValueError):
            continue
        _LOADED_AS[name] = (spec, digest)
    sys.path_hooks.insert(0, _witness_path_hook)
    for entry, finder in list(sys.path_importer_cache.items()):  # made again, through the hook, when next asked
        if isinstance(finder, FileFinder) and not _folder_is_installed(entry or "."):
            sys.path_importer_cache.pop(entry, None)


_witness_loads()
