"""The shard store on object storage (`store.url`): shards shared by key between machines.

`store.url` names a bucket prefix (`s3://bucket/prefix`, or anything fsspec serves:
`file:///mnt/team/store`, `memory://` in tests). The local `store.dir` stays in front of
it as a read-through cache (`cache/shardstore.py`); this module is the remote half, and
what a worker holding nothing but the url uses directly.

Layout under the prefix (why: a blob named by its sha256 is written once by whoever has
those bytes, so identical shards under different keys, raw shards and model weights share
one copy; a record is tiny, so "does the store have key K" costs one small GET):

    blobs/<sha256[:2]>/<sha256>          the bytes, content-addressed
    shards/<address[:2]>/<address>.json  a StoreEntry (JSON) naming the blob's sha256
    meta/<name>                          small named documents of other modules (layer records)

Atomicity guarantee. A reader never sees a partial object:
- S3 (and MinIO, moto): a PUT is atomic, and a multipart upload becomes visible only when
  it completes; an object is the old bytes or the new, never a mix.
- `file://`: bytes go to a temp file in the target folder, then `rename` (blob) or
  `link` (record: fails when the name exists), so the same holds on a POSIX filesystem.
- `memory://`: one dict assignment, in-process only (tests).
A shard is published blob first, record last, and the record is create-only
(`If-None-Match: *` on S3): a record therefore always names a complete upload, and two
writers of one key end with one record — the first; the second reads it back and, when
its bytes differ (nondeterministic compute), warns and keeps the first. A record is never
overwritten, except one that cannot be read (damaged), which is replaced with a warning.

Every read is checked: the bytes downloaded are hashed against the record's sha256, and
a mismatch is a miss (`get_blob` returns False) — the caller recomputes and `put_shard`
then repairs the damaged blob. A blob without a record (a writer that died between the
two PUTs) is a miss too; the next writer of the key reuses the blob and adds the record.

Failures. Each request is bounded: botocore retries `retries` times with a
`connect_timeout`/`read_timeout`, and s3fs retries the transient ones. A request that
still fails (the server gone, access denied, a timeout) raises `ObjectStoreUnavailable`
naming the url, and the store stays "down" for the rest of its life: later calls raise at
once instead of paying the retries again for every shard. What a caller does with that is
its choice: `ShardStore` warns once and goes on locally (or fails when `required`).

Credentials come from where boto looks (environment, `~/.aws`), or from a DVC remote
named in `store.remote` (read through DVC's config API, `.dvc/config` + `.dvc/config.local`).
A url carrying credentials (`s3://KEY:SECRET@bucket`) is refused, and nothing here writes
credentials anywhere; `repr` and error messages name the url, never a secret.

Public API (stable; used by the shard store, fetch and the Dask executor):

    ObjectStoreConfig(url, endpointurl="", region="", profile="", required=False, ...)
    objectstore_config(params, root) -> ObjectStoreConfig | None   # from params' `store:`
    ObjectStore(config, fs=None)
      .url, .counters (RequestCounts), .down (str | None)
      .get_record(address) -> StoreEntry | None          # DamagedRecord when it cannot be read
      .put_shard(entry, path, repair=False) -> StoreEntry  # the record that holds (the first writer's)
      .fetch_shard(address, dest) -> StoreEntry | None   # record + checked blob at dest; DamagedBlob on a mismatch
      .put_blob(path, sha256=None, repair=False) -> str  # sha256
      .get_blob(sha256, dest) -> bool                    # checked; False on a miss or mismatch
      .has_blob(sha256, size=None) -> bool
      .put_meta(name, data), .get_meta(name) -> bytes | None, .list_meta(prefix="") -> list[str]
      .ping() -> None                                    # raises ObjectStoreUnavailable
    Pickling an ObjectStore ships its config: a worker gets a fresh client (own counters).
    Errors: ObjectStoreError (settings, unsafe names) > ObjectStoreUnavailable (after retries),
    DamagedRecord, DamagedBlob (.entry). Names are relative ('a/b'); '..', '.', '' and hidden parts are refused.

ShardStore (cache/shardstore.py) adds, for a local directory in front of a remote:
    ShardStore(config, remote=None); .remote; .get/.materialise fall through to the remote;
    .put uploads; .pending() -> list[str]; .sync() -> int; .finish_stage(protected_sha256s)
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

from evalstack.core.atomic import atomic_copy, atomic_write_bytes, temp_path
from evalstack.core.names import UnsafeName, check_address

if TYPE_CHECKING:  # the record format is the local store's; shardstore imports this module
    from evalstack.cache.shardstore import StoreEntry

_CHUNK = 1 << 20
# where a create-only write is atomic: S3's If-None-Match, a POSIX link, one process's dict. GCS/Azure
# have conditional writes too (ifGenerationMatch=0, If-None-Match) but are untested here: add them with tests.
SCHEMES = ("s3", "s3a", "file", "memory")
_SHA256 = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


class ObjectStoreError(RuntimeError):
    """The object store cannot be used as configured."""


class ObjectStoreUnavailable(ObjectStoreError):
    """A request failed after its retries (server down, timeout, access denied)."""


@dataclass(frozen=True)
class ObjectStoreConfig:
    url: str  # s3://bucket/prefix, file:///path, memory://name
    endpointurl: str = ""  # MinIO, moto, any S3-compatible server
    region: str = ""
    profile: str = ""  # an ~/.aws profile
    required: bool = False  # True: an unreachable store is an error, not a warning (workers with no local store)
    retries: int = 3
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    # from a DVC remote's config (access_key_id, secret_access_key, session_token); never printed
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if not parts.scheme:
            raise ObjectStoreError(f"store.url {self.url!r} names no scheme; use s3://bucket/prefix (or file://, memory://)")
        if parts.username or parts.password or "@" in parts.netloc:
            raise ObjectStoreError(
                f"store.url {parts.scheme}://…@{parts.hostname or ''}{parts.path} carries credentials; "
                "remove them from params.yaml (which git and dvc.lock share) and set them in the environment "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), ~/.aws, or a DVC remote named in store.remote "
                "(`dvc remote modify --local NAME secret_access_key …`)")
        if parts.scheme not in SCHEMES:
            raise ObjectStoreError(
                f"store.url scheme {parts.scheme!r} is not supported ({', '.join(SCHEMES)}): a record must be "
                "written create-only in one request, and only these backends are known to do it atomically")
        endpoint = urlsplit(self.endpointurl) if self.endpointurl else None
        if endpoint is not None and (endpoint.username or endpoint.password or "@" in endpoint.netloc):
            raise ObjectStoreError(
                f"store.endpointurl {endpoint.scheme}://…@{endpoint.hostname or ''} carries credentials; remove them "
                "and set them in the environment, ~/.aws, or a DVC remote named in store.remote")
        if parts.query or parts.fragment:
            raise ObjectStoreError(f"store.url {self.url!r}: options go in store.endpointurl/store.remote, not the url")
        if self.retries < 0 or self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ObjectStoreError("store retries must be >= 0 and timeouts > 0")

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    def storage_options(self) -> dict[str, Any]:
        """fsspec options for this url: bounded retries and timeouts, endpoint, credentials."""
        if self.scheme not in ("s3", "s3a"):
            return {}
        options: dict[str, Any] = {
            "skip_instance_cache": True,  # one client per store: its counters and "down" state are its own
            "use_listings_cache": False,  # another writer's record must be seen at once
            "config_kwargs": {
                "retries": {"max_attempts": self.retries + 1, "mode": "standard"},
                "connect_timeout": self.connect_timeout,
                "read_timeout": self.read_timeout,
            },
        }
        if self.endpointurl:
            options["endpoint_url"] = self.endpointurl
        if self.region:
            options["client_kwargs"] = {"region_name": self.region}
        if self.profile:
            options["profile"] = self.profile
        if self.credentials.get("access_key_id"):
            options["key"] = self.credentials["access_key_id"]
            options["secret"] = self.credentials.get("secret_access_key")
            if self.credentials.get("session_token"):
                options["token"] = self.credentials["session_token"]
        return options


@dataclass
class RequestCounts:
    """Requests and bytes moved, per store (a bench reads these per stage)."""

    requests_get: int = 0
    requests_put: int = 0
    requests_head: int = 0
    requests_list: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, kind: str, n_bytes: int = 0) -> None:
        with self._lock:  # fetch's download threads share one store
            setattr(self, f"requests_{kind}", getattr(self, f"requests_{kind}") + 1)
            if kind == "get":
                self.bytes_in += n_bytes
            elif kind == "put":
                self.bytes_out += n_bytes

    def received(self, n_bytes: int) -> None:
        with self._lock:
            self.bytes_in += n_bytes

    def as_dict(self) -> dict[str, int]:
        # not dataclasses.asdict: it deep-copies every field, and a lock cannot be copied
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def check_name(name: str) -> str:
    """A metadata name: relative, '/'-separated, no '..', '.', empty or hidden parts."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ObjectStoreError(f"unsafe object-store name {name!r}: use a relative a/b/c name without '..'")
    return name


def _check_sha256(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise ObjectStoreError(f"{sha256!r} is not a sha256 hex digest")
    return sha256


class ObjectStore:
    """Shards, blobs and metadata under one url; see the module docstring."""

    def __init__(self, config: ObjectStoreConfig, fs: Any | None = None):
        import fsspec  # imported here: a project without store.url never loads fsspec/s3fs

        self.config = config
        self.url = config.url.rstrip("/")
        if fs is None:
            fs, root = fsspec.core.url_to_fs(self.url, **config.storage_options())
            if hasattr(fs, "retries"):  # s3fs's own retries of transient errors (a class attribute, 5 by default)
                fs.retries = max(1, config.retries)
        else:
            root = fs._strip_protocol(self.url)
        self.fs = fs
        self.root = str(root).rstrip("/")
        self.local = _is_local(fs)
        self.counters = RequestCounts()
        self.down: str | None = None  # why the store stopped answering; then every call fails at once
        self._create_lock = threading.Lock()  # create-only writes on backends without a server-side check

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    def __reduce__(self):
        # Shipped to a worker (Dask) as its config: the worker opens its own client, counters and "down" state.
        # Never with credentials: pickles travel over the network, and a worker's credentials are its own
        # environment's (the client's may come from a DVC remote's local config, which stays here).
        return (ObjectStore, (replace(self.config, credentials={}),))

    # -- paths ----------------------------------------------------------------------------
    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def record_name(self, address: str) -> str:
        try:
            check_address(address)
        except UnsafeName as error:
            raise ObjectStoreError(f"{self.url}: {error}") from None
        return f"shards/{address[:2]}/{address}.json"

    def blob_name(self, sha256: str) -> str:
        return f"blobs/{sha256[:2]}/{_check_sha256(sha256)}"

    # -- requests (each counted; failures after retries become ObjectStoreUnavailable) -----
    def _call(self, what: str, request: Callable[[], T]) -> T:
        if self.down is not None:
            raise ObjectStoreUnavailable(f"object store {self.url} is unreachable ({self.down})")
        try:
            return request()
        except FileExistsError:
            raise  # an answer: a create-only write lost its race
        except FileNotFoundError as error:
            if not what.startswith("PUT"):
                raise  # an answer: no such object
            # a write into a name that cannot exist: the bucket is missing (NoSuchBucket)
            self.down = f"{what}: {error} (does the bucket exist?)"
            raise ObjectStoreUnavailable(f"object store {self.url} is unreachable ({self.down})") from error
        except PermissionError as error:
            if what.startswith(("GET", "HEAD")):
                # S3 answers 403, not 404, for a missing key when the credentials may not list the bucket:
                # a miss (a PUT without permission still marks the store down)
                raise FileNotFoundError(f"{what}: {error}") from error
            self.down = f"{what}: {type(error).__name__}: {error}"
            raise ObjectStoreUnavailable(f"object store {self.url} is unreachable ({self.down})") from error
        except Exception as error:  # noqa: BLE001 — connection refused, timeouts: all end here
            if what.startswith("PUT") and _lost_create_race(error):
                raise FileExistsError(f"{what}: {error}") from error  # 412/409: another writer's create won
            self.down = f"{what}: {type(error).__name__}: {error}"
            raise ObjectStoreUnavailable(f"object store {self.url} is unreachable ({self.down})") from error

    def _cat(self, relative: str) -> bytes | None:
        self.counters.add("get")
        try:
            data = self._call(f"GET {relative}", lambda: self.fs.cat_file(self._path(relative)))
        except FileNotFoundError:
            return None
        self.counters.received(len(data))
        return data

    def _size(self, relative: str) -> int | None:
        self.counters.add("head")
        try:
            info = self._call(f"HEAD {relative}", lambda: self.fs.info(self._path(relative)))
        except FileNotFoundError:
            return None
        return int(info.get("size") or 0) if info.get("type", "file") == "file" else None

    def _pipe(self, relative: str, data: bytes, create: bool) -> bool:
        """Write `data`; with `create`, only when the name is free (False when it was taken)."""
        self.counters.add("put", len(data))
        path = self._path(relative)
        if self.local:
            return self._call(f"PUT {relative}", lambda: _local_write(Path(path), data, create))
        try:
            if create and not _server_side_create(self.fs):
                with self._create_lock:
                    if self._call(f"HEAD {relative}", lambda: self.fs.exists(path)):
                        return False
                    self._call(f"PUT {relative}", lambda: self.fs.pipe_file(path, data))
                    return True
            self._call(f"PUT {relative}", lambda: self.fs.pipe_file(path, data, mode="create" if create else "overwrite"))
        except FileExistsError:
            return False
        return True

    def _upload(self, source: Path, relative: str) -> None:
        size = source.stat().st_size
        self.counters.add("put", size)
        path = self._path(relative)
        if self.local:
            self._call(f"PUT {relative}", lambda: _local_copy(source, Path(path)))
        else:
            self._call(f"PUT {relative}", lambda: self.fs.put_file(str(source), path))

    def _download(self, relative: str, dest: Path, sha256: str) -> bool:
        """The object into `dest` (temp + rename) if it hashes to `sha256`; False (dest untouched) otherwise."""
        self.counters.add("get")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(dest)
        try:
            if self.local:
                self._call(f"GET {relative}", lambda: atomic_copy(Path(self._path(relative)), tmp))
            else:
                self._call(f"GET {relative}", lambda: self.fs.get_file(self._path(relative), str(tmp)))
            self.counters.received(tmp.stat().st_size)
            if _sha256_file(tmp) != sha256:
                return False
            os.replace(tmp, dest)
            return True
        except FileNotFoundError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _list(self, relative: str) -> list[str]:
        self.counters.add("list")
        try:
            found = self._call(f"LIST {relative}", lambda: self.fs.find(self._path(relative)))
        except FileNotFoundError:
            return []
        return sorted(str(p)[len(self.root) + 1:] for p in found)

    def ping(self) -> None:
        """One request that needs the store to answer (a LIST of the prefix, or of the bucket when the
        prefix is empty); raises ObjectStoreUnavailable, also for a bucket that does not exist."""
        self.counters.add("list")
        try:
            self._call("LIST", lambda: self.fs.ls(self.root, detail=False))
        except FileNotFoundError:
            if self.local:
                return  # a folder made by the first write
            bucket = self.root.split("/", 1)[0]
            try:
                self._call("LIST", lambda: self.fs.ls(bucket, detail=False))
            except FileNotFoundError as error:
                self.down = f"LIST: bucket {bucket!r} does not exist"
                raise ObjectStoreUnavailable(f"object store {self.url} is unreachable ({self.down})") from error

    # -- blobs ----------------------------------------------------------------------------
    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        found = self._size(self.blob_name(sha256))
        return found is not None and (size is None or found == size)

    def put_blob(self, path: Path, sha256: str | None = None, repair: bool = False) -> str:
        """Upload a file by content; its sha256. Skipped when a blob of that size is there, unless
        `repair` (a reader found those bytes damaged)."""
        path = Path(path)
        sha256 = sha256 or _sha256_file(path)
        if repair or not self.has_blob(sha256, path.stat().st_size):
            self._upload(path, self.blob_name(sha256))
        return sha256

    def get_blob(self, sha256: str, dest: Path) -> bool:
        """Download the blob to `dest` if its bytes hash to `sha256`; False on a miss or a mismatch."""
        return self._download(self.blob_name(sha256), Path(dest), sha256)

    # -- shards ---------------------------------------------------------------------------
    def get_record(self, address: str) -> StoreEntry | None:
        """The record of `address`; None when absent. A damaged record raises DamagedRecord."""
        data = self._cat(self.record_name(address))
        return None if data is None else _parse_record(data, address, self.url)

    def fetch_shard(self, address: str, dest: Path) -> StoreEntry | None:
        """The shard's record, with its checked bytes placed at `dest`; None on a miss
        (no record, no blob, or bytes that do not match: DamagedBlob says which)."""
        entry = self.get_record(address)
        if entry is None:
            return None
        if not self.get_blob(entry.sha256, dest):
            if self.has_blob(entry.sha256):
                raise DamagedBlob(entry, f"{self.url}/{self.blob_name(entry.sha256)}: bytes differ from the "
                                         f"sha256 its record {address[:12]}… names")
            return None  # a record whose blob is gone: a miss, repaired by the next put
        return entry

    def put_shard(self, entry: StoreEntry, path: Path, repair: bool = False) -> StoreEntry:
        """Publish the shard at `path` (whose bytes are `entry.sha256`): blob first, then the record,
        create-only. Returns the record that holds: `entry`, or an earlier writer's, whose sha256
        differs from `entry`'s when the compute is not deterministic (the caller warns)."""
        self.put_blob(path, entry.sha256, repair=repair)
        name = self.record_name(entry.address)
        data = (json.dumps(asdict(entry), sort_keys=True) + "\n").encode()
        if self._pipe(name, data, create=True):
            return entry
        try:
            held = self.get_record(entry.address)
        except DamagedRecord:
            held = None
        if held is None:  # a damaged record (or one removed meanwhile): replace it
            self._pipe(name, data, create=False)
            return entry
        return held

    # -- metadata -------------------------------------------------------------------------
    def put_meta(self, name: str, data: bytes) -> None:
        self._pipe(f"meta/{check_name(name)}", bytes(data), create=False)

    def get_meta(self, name: str) -> bytes | None:
        return self._cat(f"meta/{check_name(name)}")

    def list_meta(self, prefix: str = "") -> list[str]:
        """Names under `prefix` ('' = all), relative to meta/."""
        folder = f"meta/{check_name(prefix.rstrip('/'))}" if prefix.strip("/") else "meta"
        names = [name.removeprefix("meta/") for name in self._list(folder)]
        return [name for name in names if name.startswith(prefix)]


class DamagedRecord(ObjectStoreError):
    """A record that is not valid JSON of a StoreEntry for its own address."""


class DamagedBlob(ObjectStoreError):
    def __init__(self, entry: StoreEntry, message: str):
        super().__init__(message)
        self.entry = entry

    def __reduce__(self) -> tuple:  # a Dask worker's error travels pickled (see DiskFullError)
        return type(self), (self.entry, str(self))


def _parse_record(data: bytes, address: str, url: str) -> StoreEntry:
    from evalstack.cache.shardstore import StoreEntry  # here: shardstore imports this module

    try:
        entry = StoreEntry(**json.loads(data))
        _check_sha256(entry.sha256)
    except (ValueError, TypeError, ObjectStoreError) as error:
        raise DamagedRecord(f"{url}: the record of {address[:12]}… is damaged ({error})") from None
    if entry.address != address:
        raise DamagedRecord(f"{url}: the record of {address[:12]}… names another address {entry.address[:12]}…")
    return entry


def _lost_create_race(error: BaseException) -> bool:
    """A create-only write refused because the name was taken meanwhile: 412 PreconditionFailed (s3fs maps
    it to FileExistsError only when the response names If-None-Match) or AWS's 409 ConditionalRequestConflict
    for two conditional writes at once."""
    text = f"{error} {error.__cause__ or ''}"
    return any(code in text for code in ("PreconditionFailed", "ConditionalRequestConflict", "(412)", "(409)"))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as reader:
        for chunk in iter(lambda: reader.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _server_side_create(fs: Any) -> bool:
    """Backends whose `pipe_file(mode="create")` is one atomic conditional request."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("s3", "s3a")


def _local_write(path: Path, data: bytes, create: bool) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not create:
        atomic_write_bytes(path, data)
        return True
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        os.link(tmp, path)  # atomic and exclusive: fails when the name exists
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _local_copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_copy(source, dest)


def objectstore_config(params: Mapping[str, Any], root: Path = Path(".")) -> ObjectStoreConfig | None:
    """The remote half of the shard store from `store:` (url, endpointurl, remote, required); None
    when `store.url` is empty. `store.remote` names a DVC remote whose endpointurl, region, profile
    and credentials are used (what `store:` sets itself wins)."""
    section = params.get("store") or {}
    url = str(section.get("url") or "")
    if not url:
        return None
    options: dict[str, Any] = {}
    if section.get("remote"):
        options = dvc_remote_options(str(section["remote"]), root)
    credentials = {k: str(options[k]) for k in ("access_key_id", "secret_access_key", "session_token") if options.get(k)}
    return ObjectStoreConfig(
        url=url,
        endpointurl=str(section.get("endpointurl") or options.get("endpointurl") or ""),
        region=str(section.get("region") or options.get("region") or ""),
        profile=str(section.get("profile") or options.get("profile") or ""),
        required=bool(section.get("required", False)),
        credentials=credentials,
    )


def dvc_remote_options(name: str, root: Path) -> dict[str, Any]:
    """A DVC remote's options as DVC merges them (system, global, .dvc/config, .dvc/config.local)."""
    from dvc.config import Config, ConfigError  # DVC's own reader: same precedence as `dvc push`

    dvc_dir = _find_dvc_dir(Path(root))
    try:
        config = Config(dvc_dir=str(dvc_dir) if dvc_dir else None)
    except ConfigError as error:
        raise ObjectStoreError(f"store.remote {name!r}: DVC's config cannot be read ({error})") from None
    remotes = config.get("remote", {})
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise ObjectStoreError(f"store.remote {name!r} is not a DVC remote here (known: {known}); "
                               "`dvc remote list` shows them")
    return dict(remotes[name])


def _find_dvc_dir(start: Path) -> Path | None:
    for directory in (start.resolve(), *start.resolve().parents):
        if (directory / ".dvc").is_dir():
            return directory / ".dvc"
    return None

