"""`evalstack doctor`: what stands between this clone and a working `dvc repro`, with the fix for each.

Checks, per the project's profiles (the root dvc.yaml and each `<folder>/dvc.yaml`):

- each profile's params.yaml has no YAML alias bomb (DVC would run out of memory parsing it);
- each profile's `dvc.lock` parses (a SIGKILL while DVC prints "Updating lock file" leaves it
  empty, and then every `dvc` command fails with a schema error);
- each DVC remote is reachable: a local path must exist (a relative one is resolved against
  `.dvc/`, as DVC does, which breaks in a clone at another depth), a server must accept a
  connection;
- the shard store is there, writable, within its size limit, and its records are readable;
- each profile's state: what dvc.lock records, and which outputs are in the workspace, in
  DVC's cache, or nowhere here;
- each layer's libraries: the versions its key records (numpy, Pillow, OpenCV, the model's framework)
  against the installed ones. DVC tracks no library versions, so after an upgrade `dvc repro` reruns
  nothing, while a build from nothing may give other bits;
- free space on every disk the project writes to.

Each line is `ok`, `WARN` or `FAIL`; FAIL lines carry the fix. Exit status 1 when any FAIL.
"""
from __future__ import annotations

import json
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from evalstack.cache.dvcfiles import (
    LOCK_NAME,
    LockFileError,
    cache_dir,
    cache_file,
    dir_listing,
    dvc_config,
    find_repo_root,
    locked_outs,
    read_lock,
)
from evalstack.cache.objectstore import ObjectStoreError
from evalstack.cache.shardstore import ShardStore, open_store
from evalstack.config import ConfigError, check_alias_expansion, load_params
from evalstack.core.atomic import atomic_write_bytes, format_bytes, free_bytes, is_no_space, stale_temp_files
from evalstack.core.fingerprint import runtime_part

MIN_FREE_BYTES = 1 << 30  # below this a stage that writes a layer may run out of space
CONNECT_TIMEOUT_S = 3.0
DEFAULT_PORTS = {"ssh": 22, "http": 80, "https": 443, "s3": 443, "webdav": 80, "webdavs": 443}


@dataclass(frozen=True)
class Finding:
    level: str  # ok | WARN | FAIL
    message: str
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"  {self.level:<5} {self.message}"]
        if self.fix:
            out.append(f"        fix: {self.fix}")
        return out


def profiles(root: Path) -> list[Path]:
    """Folders holding a dvc.yaml: the project root and its direct subfolders (detection/)."""
    found = [root] if (root / "dvc.yaml").exists() else []
    found += sorted(p.parent for p in root.glob("*/dvc.yaml") if p.parent.name not in ("data", ".dvc"))
    return found


def _name(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


# -- dvc.lock ---------------------------------------------------------------------------------
def check_lock(root: Path, profile: Path) -> Finding:
    lock = profile / LOCK_NAME
    rel = _name(root, lock)
    try:
        data = read_lock(lock)
    except LockFileError as error:
        empty = lock.stat().st_size == 0 or not lock.read_text().strip()
        cause = (f"{rel} is empty: DVC was stopped while it printed \"Updating lock file\" (it rewrites the file in "
                 "place), so every dvc command now fails with a schema error") if empty else str(error).split(";")[0]
        return Finding("FAIL", cause,
                       f"`git checkout {rel}` restores the last committed lock file (then `dvc status` says what to "
                       f"rerun); if it was never committed, delete it and run `dvc commit -f` in {_name(root, profile)} "
                       "to record the outputs in the workspace, or `dvc repro` to rebuild them")
    if data is None:
        return Finding("ok", f"{rel}: none yet (the {_name(root, profile / 'dvc.yaml')} pipeline has not run here)")
    return Finding("ok", f"{rel} parses ({len(data.get('stages') or {})} stages recorded)")


# -- remotes ----------------------------------------------------------------------------------
def check_params(root: Path, profile: Path) -> Finding:
    """DVC parses params.yaml before any stage runs: an alias bomb makes every dvc command run out of memory
    with no word about why, so it is named here, where nothing but our own linear count reads it."""
    path = profile / "params.yaml"
    if not path.exists():
        return Finding("ok", f"{_name(root, path)}: none")
    try:
        check_alias_expansion(path.read_text(), _name(root, path))
    except ConfigError as error:
        return Finding("FAIL", str(error), f"fix {_name(root, path)} (`git diff {_name(root, path)}` shows what changed)")
    return Finding("ok", f"{_name(root, path)}: parses, no alias bomb")


def check_remotes(root: Path) -> list[Finding]:
    config = dvc_config(root)
    default = config.get("core", {}).get("remote", "")
    remotes = {section[len('remote "'):-1]: options for section, options in config.items()
               if section.startswith('remote "') and section.endswith('"')}
    if not remotes:
        return [Finding("WARN", "no DVC remote is configured: `dvc push`/`dvc pull` have nowhere to go",
                        "`dvc remote add -d storage /abs/path/or/s3://bucket/prefix` (README: Remotes)")]
    return [check_remote(root, name, options.get("url", ""), options, name == default) for name, options in sorted(remotes.items())]


def check_remote(root: Path, name: str, url: str, options: dict[str, str], default: bool) -> Finding:
    label = f"remote {name}{' (default)' if default else ''}"
    parts = urlsplit(url)
    if not parts.scheme or parts.scheme == "file" or len(parts.scheme) == 1:  # a path (C:\… has a 1-letter scheme)
        path = Path(parts.path if parts.scheme == "file" else url).expanduser()
        resolved = (root / ".dvc" / path).resolve() if not path.is_absolute() else path
        relative = "" if path.is_absolute() else f" (relative: DVC resolves {url} against {root / '.dvc'})"
        if resolved.is_dir():
            hint = "; a relative path breaks in a clone at another depth, an absolute one does not" if relative else ""
            return Finding("ok" if not relative else "WARN", f"{label}: {resolved} is reachable{relative}{hint}",
                           f"`dvc remote modify {name} url {resolved}`" if relative else "")
        fix = (f"a relative remote path only works in clones at the same place relative to it: set the absolute "
               f"path, `dvc remote modify {name} url /abs/path/to/storage` (add `--local` for this clone only)"
               if relative else f"mount or create {resolved}, or `dvc remote modify {name} url …`")
        return Finding("FAIL", f"{label}: {resolved} does not exist{relative}", fix)
    host, port = _endpoint(parts.scheme, url, options)
    if not host:
        return Finding("WARN", f"{label}: {url}: cannot tell which host to check")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        return Finding("FAIL", f"{label}: {url}: cannot connect to {host}:{port} ({error.strerror or error})",
                       "check the network/VPN and the remote's url/endpointurl/port (`dvc remote list`)")
    return Finding("ok", f"{label}: {url}: {host}:{port} accepts connections")


def _endpoint(scheme: str, url: str, options: dict[str, str]) -> tuple[str, int]:
    target = urlsplit(options["endpointurl"]) if scheme == "s3" and options.get("endpointurl") else urlsplit(url)
    if scheme == "s3" and not options.get("endpointurl"):
        return "s3.amazonaws.com", 443
    port = target.port or int(options.get("port", 0) or 0) or DEFAULT_PORTS.get(target.scheme, 443)
    return target.hostname or "", port


# -- the shard store --------------------------------------------------------------------------
def check_store(store: ShardStore | None, deep: bool = False) -> list[Finding]:
    if store is None:
        return [Finding("ok", "shard store: off (store.dir is empty); every stage computes everything")]
    where = store.directory
    findings = check_remote_store(store)
    if not where.exists():
        return findings + [Finding("ok", f"shard store {where}: not created yet (the first stage run creates it)")]
    try:
        probe = where / ".doctor-probe"
        atomic_write_bytes(probe, b"ok", durable=False)
        probe.unlink()
    except OSError as error:
        cause = "its disk is full" if is_no_space(error) else (error.strerror or str(error))
        findings.append(Finding("FAIL", f"shard store {where}: cannot write ({cause}); stages run without caching",
                                "free space (`evalstack gc --max-bytes N`), fix the permissions, or set store.dir elsewhere"))
    records = list((where / "shards").glob("*/*.json"))
    entries = list(store.entries())
    usage = sum(entry.size for entry in entries)
    findings.append(Finding("ok", f"shard store {where}: {len(entries)} entries, {format_bytes(usage)} "
                                  f"(limit {format_bytes(store.config.max_bytes)})"))
    if usage > store.config.max_bytes:
        findings.append(Finding("WARN", f"shard store {where} is above store.max_bytes", "`evalstack gc`"))
    if len(records) > len(entries):
        findings.append(Finding("WARN", f"shard store {where}: {len(records) - len(entries)} records without a "
                                        "matching shard (those shards are recomputed when needed)", "`evalstack gc`"))
    stale = stale_temp_files(where / "shards", "*/.*.tmp")
    if stale:
        findings.append(Finding("WARN", f"shard store {where}: {len(stale)} temp files of crashed writers", "`evalstack gc`"))
    if deep:
        damaged = store.verify()
        findings.append(Finding("FAIL" if damaged else "ok", f"shard store {where}: {len(damaged)} damaged entries"
                                if damaged else f"shard store {where}: every entry matches its sha256",
                                "`evalstack gc` after `evalstack store verify` lists them" if damaged else ""))
    return findings


def check_remote_store(store: ShardStore) -> list[Finding]:
    """store.url: does the object store answer (one LIST), and is anything waiting to be uploaded.
    Names the url and endpoint only: credentials are never printed."""
    if store.remote is None:
        return []
    remote = store.remote
    endpoint = f" (endpoint {remote.config.endpointurl})" if remote.config.endpointurl else ""
    pending = store.pending() if store.directory.exists() else []
    waiting = [Finding("WARN", f"shard store: {len(pending)} shards computed while {remote.url} was unreachable "
                               "wait in pending/ to be uploaded", "the next stage run uploads them")] if pending else []
    try:
        remote.ping()
    except ObjectStoreError as error:
        level = "FAIL" if remote.config.required else "WARN"
        return [Finding(level, f"shard store remote {remote.url}{endpoint}: unreachable ({error.__cause__ or error})",
                        "check the network, store.url/endpointurl, and the credentials (environment, ~/.aws, or "
                        "the DVC remote named in store.remote); stages go on locally unless store.required")] + waiting
    return [Finding("ok", f"shard store remote {remote.url}{endpoint}: reachable")] + waiting


# -- each profile's state ---------------------------------------------------------------------
def check_profile(root: Path, profile: Path) -> list[Finding]:
    label = _name(root, profile / "dvc.yaml")
    try:
        outs = locked_outs(profile)
    except LockFileError:
        return [Finding("FAIL", f"{label}: state unknown until its dvc.lock is fixed (see above)")]
    if not outs:
        command = "dvc repro" if profile == root else f"dvc repro {label}"
        return [Finding("ok", f"{label}: nothing recorded yet; `{command}` builds it")]
    cache = cache_dir(root)
    here, cached, nowhere = [], [], []
    for out in outs:
        if (profile / out.path).exists():
            here.append(out)
        elif out.md5 and _in_cache(cache, out.md5):
            cached.append(out)
        else:
            nowhere.append(out)
    message = f"{label}: {len(outs)} outputs recorded; {len(here)} in the workspace"
    if not cached and not nowhere:
        return [Finding("ok", message)]
    fixes = []
    if cached:
        fixes.append(f"`dvc checkout` restores {len(cached)} from DVC's cache")
    if nowhere:
        fixes.append(f"`dvc pull` (or `dvc repro`) gets {len(nowhere)} that this clone lacks: "
                     + ", ".join(out.path for out in nowhere[:4]) + (" …" if len(nowhere) > 4 else ""))
    return [Finding("WARN", f"{message}, {len(cached)} only in DVC's cache, {len(nowhere)} nowhere here", "; ".join(fixes))]


def _in_cache(cache: Path, md5: str) -> bool:
    try:
        if md5.endswith(".dir"):
            return dir_listing(cache, md5) is not None
        return cache_file(cache, md5).exists()
    except Exception:  # a crafted md5 is refused by cache_file; here it only means "not available"
        return False


# -- the libraries each layer was computed with ---------------------------------------------------------
INDEX_NAME = "index.json"  # core.layers.INDEX_NAME, without importing the layers module (h5py) for doctor


def check_runtime(root: Path, profile: Path) -> list[Finding]:
    """Layers whose key records another version of a library than the one installed, by stage."""
    try:
        outs = locked_outs(profile)
    except LockFileError:
        return []  # named by the dvc.lock check
    changed: dict[str, dict[str, str]] = {}  # stage → {library: "recorded → installed"}
    layers = 0
    installed_versions: dict[str, str] = {}  # one metadata lookup per library, not one per layer
    for out in outs:
        directory = profile / out.path
        if not directory.is_dir():
            continue
        for index in [directory / INDEX_NAME, *sorted(directory.glob(f"*/{INDEX_NAME}"))]:  # a grid: one layer per cell
            recorded_versions = _recorded_runtime(index)
            layers += bool(recorded_versions)
            for library, recorded in sorted(recorded_versions):
                if library not in installed_versions:
                    installed_versions[library] = runtime_part(library)[library]
                installed = installed_versions[library]
                if installed != recorded:
                    changed.setdefault(out.stage, {})[library] = f"{recorded} → {installed}"
    label = _name(root, profile / "dvc.yaml")
    if not layers:
        return [Finding("ok", f"{label}: no layers here yet")]
    if not changed:
        return [Finding("ok", f"{label}: {layers} layers here, each computed with the installed library versions")]
    findings = []
    for stage, libraries in sorted(changed.items()):
        versions = ", ".join(f"{library} {change}" for library, change in sorted(libraries.items()))
        findings.append(Finding(
            "WARN", f"{label}: {stage}'s outputs were computed with other library versions than installed ({versions});"
            " DVC tracks no library versions, so `dvc repro` will not rerun it, and a build from nothing may differ",
            f"`dvc repro -f {stage}`, then `dvc repro` (the shard store recomputes only the layers whose versions "
            "changed), or install the recorded versions (requirements.lock)"))
    return findings


def _recorded_runtime(index: Path) -> set[tuple[str, str]]:
    """(library, version) of every `runtime` part in a layer's key: its own, the model's, the pipeline's (each
    part records the versions of the step it keys, so one library may appear with two versions)."""
    try:
        key = json.loads(index.read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()  # no layer here, or a damaged index: the stages that read it say so
    found: set[tuple[str, str]] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if name == "runtime" and isinstance(value, dict):
                    found.update((str(k), str(v)) for k, v in value.items())
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(key)
    return found


# -- free space -------------------------------------------------------------------------------
def check_space(root: Path, store: ShardStore | None, min_free: int = MIN_FREE_BYTES) -> list[Finding]:
    places = {"project outputs (data/, models/, …)": root, "DVC's cache": cache_dir(root),
              "temp files": Path(tempfile.gettempdir())}
    if store is not None:
        places["shard store"] = store.directory
    findings = []
    for label, path in places.items():
        free = free_bytes(path)
        if free is None:
            findings.append(Finding("WARN", f"{label} {path}: free space unknown"))
        elif free < min_free:
            findings.append(Finding("FAIL", f"{label} {path}: only {format_bytes(free)} free",
                                    "free space on that disk (`evalstack gc` trims the shard store; `dvc gc -w` DVC's "
                                    "cache) or move the folder to a larger disk"))
        else:
            findings.append(Finding("ok", f"{label} {path}: {format_bytes(free)} free"))
    return findings


def doctor(params_path: Path, deep: bool = False, min_free: int = MIN_FREE_BYTES) -> list[tuple[str, list[Finding]]]:
    """Every check, grouped by what it is about."""
    project = params_path.resolve().parent
    root = find_repo_root(project) or project
    groups: list[tuple[str, list[Finding]]] = []
    if not (root / ".dvc").is_dir():
        groups.append(("project", [Finding("FAIL", f"{root} is not a DVC repository (no .dvc/)", "`dvc init`")]))
    folders = profiles(root)
    groups.append(("dvc.lock", [check_lock(root, profile) for profile in folders]
                   or [Finding("WARN", f"no dvc.yaml in {root}")]))
    groups.append(("params", [check_params(root, profile) for profile in folders]))
    groups.append(("remotes", check_remotes(root)))
    store = None
    try:
        store = open_store(load_params(params_path) if params_path.exists() else {}, project)
        groups.append(("shard store", check_store(store, deep)))
    except Exception as error:  # a bad store: section is itself a finding
        groups.append(("shard store", [Finding("FAIL", f"store settings in {params_path}: {error}")]))
    groups.append(("profiles", [finding for profile in folders for finding in check_profile(root, profile)]))
    groups.append(("libraries", [finding for profile in folders for finding in check_runtime(root, profile)]))
    groups.append(("free space", check_space(root, store, min_free)))
    return groups


def report(groups: list[tuple[str, list[Finding]]]) -> tuple[list[str], bool]:
    lines, failed = [], False
    for title, findings in groups:
        lines.append(f"{title}:")
        for finding in findings:
            lines.extend(finding.lines())
            failed |= finding.level == "FAIL"
    lines.append("doctor: problems found (see FAIL lines)" if failed else "doctor: no problems found")
    return lines, failed
