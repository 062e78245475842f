"""Fetch on a Dask cluster whose workers share nothing with this machine but the object store.

Downloading is what makes fetch slow at scale (one process, latency-bound GETs and one decode
per image), and it is the part that needs nothing from the project. So with `executor: dask`,
a scheduler at `dask.address` and an object-store `store.url`:

- Phase A, on the workers: the rows needing bytes are sent in runs (`fetch.rows_per_task`, in
  id order). A task downloads its rows (the same Transport settings, md5 check and
  `check_image` as the plain path), packs their bytes into blobs of about `fetch.shard_bytes`,
  puts each pack in the object store by its sha256, and returns per row (id, item key, length,
  offset) — plus the failures, as the plain path collects them. Tasks receive rows and the
  store's url and settings, never a project path; the workers' credentials come from their own
  environment (the client's DVC-remote credentials are not sent).
- Phase B, on the client: each pack is read back (sha256-checked), its items' sha256 checked,
  and each item written to the fetch history's download area — exactly where the plain path
  puts a download. From there on nothing differs: arrivals are recorded in the listing, shard
  boundaries are cut from the lengths (`core.raw.ShardCutter` needs every length, so they can
  only be cut once the bytes are in), and the client writes the shards. The raw layer is the
  same bytes whichever path built it, and a fetch that stops short resumes from the download
  area without downloading again.

Rows whose image is a local file (a `file://` source on this machine's disk) and rows already
in the download area stay on the client: a remote worker cannot read this disk.
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from tqdm import tqdm

from evalstack.cache.objectstore import ObjectStore, ObjectStoreConfig, ObjectStoreError
from evalstack.cache.storejobs import worker_config
from evalstack.core.fingerprint import StaleCodeError
from evalstack.core.keys import sha256_bytes
from evalstack.fetch.downloads import AREA, Arrival, DownloadOutcome, Failure, chunks, download_items, is_local
from evalstack.fetch.history import RawHistory
from evalstack.fetch.plan import item_checks
from evalstack.sources.images import check_image
from evalstack.sources.registry import RegistryRow, SourceError
from evalstack.sources.transport import SourceUnreachable, Transport, TransportConfig, Validators

ROWS_PER_TASK = 64  # a task's scheduling costs ~ms: amortised over 64 downloads; small enough to spread work
_NOT_ATTEMPTED = "not attempted: the source became unreachable"


@dataclass(frozen=True)
class WorkerSettings:
    """All a fetch task needs: no project path, no credentials (the worker's environment has its own)."""

    transport: TransportConfig
    store: ObjectStoreConfig
    max_pixels: int
    threads: int  # concurrent downloads in one task (the plain path's `fetch.workers`)
    pack_bytes: int  # a pack is closed once it holds this many bytes


@dataclass(frozen=True)
class PackedItem:
    id: int
    item_key: str  # sha256 of the image bytes
    length: int
    offset: int  # in its pack


@dataclass(frozen=True)
class Pack:
    sha256: str  # the blob's name in the object store
    items: tuple[PackedItem, ...]


@dataclass(frozen=True)
class RowFailure:
    id: int
    cause: str  # the SourceError's message, as the plain path records it
    unreachable: bool  # the source went away (SourceUnreachable)


@dataclass
class RunResult:
    """What one task returns: small records only; the bytes are in the object store."""

    packs: list[Pack] = field(default_factory=list)
    failures: list[RowFailure] = field(default_factory=list)
    gets: int = 0
    retries: int = 0
    bytes_read: int = 0
    checks: dict[str, dict[str, str]] = field(default_factory=dict)  # what checked the images on the worker
    # row id → the validators its response carried, for rows the source names by URL alone (fetch/revalidate.py)
    validators: dict[int, Validators] = field(default_factory=dict)


def fetch_run(rows: list[RegistryRow], settings: WorkerSettings) -> RunResult:
    """A task: download and check `rows`, put their bytes in the object store as packs."""
    stop = threading.Event()  # once the host is unreachable, the rest of the run is not tried

    def one(row: RegistryRow) -> bytes | SourceError:
        if stop.is_set():
            return SourceError(_NOT_ATTEMPTED)
        try:
            data, validators = transport.get_validated(row.resolved_url, row.what, row.hashlib_md5)
            check_image(data, settings.max_pixels, row.what)
            if not row.hashlib_md5:
                result.validators[row.id] = validators
            return data
        except SourceUnreachable as error:
            stop.set()
            return error
        except SourceError as error:
            return error

    try:
        checks = item_checks()  # the worker's own evalstack and Pillow
    except StaleCodeError as error:  # it loaded other checks than its files hold: the client checks the images again
        checks = {"stale": {"error": str(error)}}
    result = RunResult(checks=checks)
    store = ObjectStore(settings.store)
    with Transport(settings.transport) as transport, tempfile.TemporaryDirectory(prefix="evalstack-pack-") as scratch, \
            ThreadPoolExecutor(max_workers=max(1, settings.threads)) as pool:
        packer = _Packer(store, Path(scratch), settings.pack_bytes)
        for row, got in zip(rows, pool.map(one, rows)):  # in row order: packs follow id order
            if isinstance(got, SourceError):
                result.failures.append(RowFailure(row.id, str(got), isinstance(got, SourceUnreachable)))
            else:
                packer.add(row.id, got)
        result.packs = packer.finish()
        result.gets, result.retries, result.bytes_read = transport.gets, transport.retries, transport.bytes
    return result


class _Packer:
    """Items' bytes joined into blobs of about `limit` bytes, each put in the store when closed."""

    def __init__(self, store: ObjectStore, scratch: Path, limit: int):
        self.store, self.scratch, self.limit = store, scratch, limit
        self.parts: list[bytes] = []
        self.items: list[PackedItem] = []
        self.size = 0
        self.packs: list[Pack] = []

    def add(self, item_id: int, data: bytes) -> None:
        self.items.append(PackedItem(item_id, sha256_bytes(data), len(data), self.size))
        self.parts.append(data)
        self.size += len(data)
        if self.size >= self.limit:
            self._close()

    def _close(self) -> None:
        if not self.items:
            return
        path = self.scratch / "pack"
        path.write_bytes(b"".join(self.parts))
        # content-addressed: a retried task puts the same name; repair=True so a damaged blob of that name is
        # replaced, not kept (a pack is new bytes almost always: the upload costs nothing extra)
        sha256 = self.store.put_blob(path, repair=True)
        self.packs.append(Pack(sha256, tuple(self.items)))
        self.parts, self.items, self.size = [], [], 0

    def finish(self) -> list[Pack]:
        self._close()
        return self.packs


class ClusterFetch:
    """A Dask client (connected on first use) and the object store its workers share with this process."""

    def __init__(self, store: ObjectStore, connect: Callable[[], Any], rows_per_task: int = ROWS_PER_TASK):
        if rows_per_task < 1:
            raise SourceError(f"fetch.rows_per_task must be >= 1, got {rows_per_task}")
        self.store = store  # this process's handle: it has the client's credentials
        self.rows_per_task = rows_per_task
        self._connect = connect
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:  # a re-fetch with nothing new never connects
            self._client = self._connect()
        return self._client

    def worker_store(self) -> ObjectStoreConfig:
        # Credentials stay here: tasks travel pickled, and a worker's credentials are its own environment's.
        return worker_config(self.store.config)


def download_on_cluster(listing: Any, transport: Transport, history: RawHistory, cluster: ClusterFetch,
                        max_pixels: int, threads: int, pack_bytes: int,
                        record: Callable[[list[Arrival]], None]) -> DownloadOutcome:
    """`download_items` for `listing.needing_bytes()`, the remote rows' downloads done on the cluster.
    Rows already in the download area or read from this machine's disk are handled here first.
    `record` hears of the arrivals, as download_items' does."""
    handled: set[int] = set()  # decided once: a download area shared with another checkout may gain files meanwhile

    def here(row: RegistryRow) -> bool:
        if is_local(row) or history.has_download(row):
            handled.add(row.id)
            return True
        return False

    local = download_items((row for row in listing.needing_bytes() if here(row)), None, transport, history,
                           max_pixels, threads, record)
    if local.unreachable:
        return local
    remote = _download_remote((row for row in listing.needing_bytes() if row.id not in handled), cluster, history,
                              WorkerSettings(transport.config, cluster.worker_store(), max_pixels, threads, pack_bytes),
                              record)
    failures = sorted(local.failures + remote.failures, key=lambda failure: failure.id)
    return DownloadOutcome(local.downloaded + remote.downloaded, failures, remote.unreachable, remote.activity,
                           local.validators + remote.validators)


def _download_remote(rows: Iterable[RegistryRow], cluster: ClusterFetch, history: RawHistory,
                     settings: WorkerSettings, record: Callable[[list[Arrival]], None]) -> DownloadOutcome:
    outcome = DownloadOutcome()
    activity = {"worker_http_gets": 0, "worker_http_retries": 0, "worker_bytes_read": 0, "packs": 0, "pack_bytes": 0}
    runs = chunks(rows, cluster.rows_per_task)
    first = next(runs, None)
    if first is None:
        return outcome
    from distributed import as_completed  # deferred: a fetch without a cluster never imports distributed

    client = cluster.client
    in_flight = 2 * max(1, len(client.nthreads()))  # each worker busy, one run queued behind it
    submitted: dict[str, tuple[Any, list[RegistryRow]]] = {}  # key → (future, its rows)

    def submit(run: list[RegistryRow]) -> Any:
        future = client.submit(fetch_run, run, settings, pure=False, key=f"fetch-{run[0].id}-{run[-1].id}")
        submitted[future.key] = (future, run)
        return future

    pending = as_completed([submit(first)] + [submit(run) for run in _take(runs, in_flight - 1)])
    with tqdm(desc="fetch (dask)", unit="card") as progress, \
            tempfile.TemporaryDirectory(prefix="evalstack-packs-") as scratch:
        for future in pending:
            run = submitted.pop(future.key)[1]
            progress.update(len(run))
            if future.cancelled():  # queued when the source went away: as the plain path, listed, not tried
                outcome.failures += [Failure.of(row, _NOT_ATTEMPTED) for row in run]
                continue
            try:
                result: RunResult = future.result()
            except ObjectStoreError as error:
                _cancel(submitted)
                raise FetchOnClusterFailed(
                    f"a Dask worker cannot use the object store ({error}); workers read their credentials "
                    "from their own environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws), not from "
                    "this machine's DVC remote") from None
            # A worker whose image checks differ from this machine's (another evalstack or Pillow there) did not
            # check what the layer will record as checked: its images are checked again here.
            again = settings.max_pixels if result.checks != item_checks() else None
            arrivals = _unpack(result, run, cluster.store, history, Path(scratch), again)
            _check_covered(run, arrivals, result)
            record(arrivals)
            urls = {row.id: row.resolved_url for row in run}
            outcome.validators += [(urls[item_id], key, result.validators[item_id])
                                   for item_id, key, *_ in arrivals if item_id in result.validators]
            outcome.downloaded += len(arrivals)
            _add_failures(outcome, result, run)
            for name, value in (("worker_http_gets", result.gets), ("worker_http_retries", result.retries),
                                ("worker_bytes_read", result.bytes_read), ("packs", len(result.packs))):
                activity[name] += value
            activity["pack_bytes"] += sum(item.length for pack in result.packs for item in pack.items)
            if outcome.unreachable:
                _cancel(submitted)  # what is queued is not tried one by one
            else:
                for more in _take(runs, 1):
                    pending.add(submit(more))
    outcome.failures.sort(key=lambda failure: failure.id)
    outcome.activity = activity
    return outcome


def _add_failures(outcome: DownloadOutcome, result: RunResult, run: list[RegistryRow]) -> None:
    by_id = {row.id: row for row in run}
    for failure in result.failures:
        outcome.failures.append(Failure.of(by_id[failure.id], failure.cause))
        if failure.unreachable:
            outcome.unreachable = outcome.unreachable or failure.cause


def _check_covered(run: list[RegistryRow], arrivals: list[Arrival], result: RunResult) -> None:
    """Every row of a run came back, as bytes or as a failure: a row a worker dropped would otherwise leave
    the layer without a word."""
    answered = [arrival[0] for arrival in arrivals] + [failure.id for failure in result.failures]
    if sorted(answered) != sorted(row.id for row in run):
        missing = sorted({row.id for row in run} - set(answered))
        raise FetchOnClusterFailed(f"a Dask worker's answer for rows {run[0].id}–{run[-1].id} does not account for "
                                   f"every row (missing: {missing[:10]}, or one twice); fetch again")


def _take(runs: Iterator[list[RegistryRow]], n: int) -> list[list[RegistryRow]]:
    return [run for _, run in zip(range(n), runs)]


def _cancel(submitted: dict[str, tuple[Any, list[RegistryRow]]]) -> None:
    """Cancel the runs not finished yet (a finished one still comes back with its downloads)."""
    for future, _ in submitted.values():
        if not future.done():
            future.cancel()


class FetchOnClusterFailed(SourceError):
    """The cluster path cannot go on (the workers cannot reach the object store, a pack went missing)."""


def _unpack(result: RunResult, run: list[RegistryRow], store: ObjectStore, history: RawHistory,
            scratch: Path, check_again: int | None = None) -> list[Arrival]:
    """Each pack read back (sha256-checked), each item checked against its key and written to the
    download area, as the plain path leaves a download: what follows is the plain path's code. With
    `check_again` (max_pixels), each image is checked here too, and one refused becomes the run's failure."""
    rows = {row.id: row for row in run}
    arrivals: list[Arrival] = []
    for pack in result.packs:
        path = scratch / pack.sha256
        if not store.get_blob(pack.sha256, path):
            raise FetchOnClusterFailed(f"pack {pack.sha256[:12]}… written by a Dask worker is missing or damaged in "
                                       f"{store.url}; fetch again")
        data = path.read_bytes()
        path.unlink()
        for item in pack.items:
            image = data[item.offset : item.offset + item.length]
            if len(image) != item.length or sha256_bytes(image) != item.item_key:
                raise FetchOnClusterFailed(f"{rows[item.id].what}: its bytes in pack {pack.sha256[:12]}… differ "
                                           "from what the worker reported; fetch again")
            if check_again is not None:
                try:
                    check_image(image, check_again, rows[item.id].what)
                except SourceError as error:
                    result.failures.append(RowFailure(item.id, str(error), False))
                    continue
            history.save_download(rows[item.id], image)
            arrivals.append((item.id, item.item_key, item.length, AREA))
    return arrivals


@contextlib.contextmanager
def fetch_cluster(params: Mapping[str, Any], store: Any) -> Iterator[ClusterFetch | None]:
    """The cluster fetch downloads on, or None (fetch stays in this process).

    Only with `executor: dask`, a scheduler at `dask.address` and a shard store with an object-store
    `store.url`. A LocalCluster is not started for fetch: its workers share this machine's network
    and cores, so they would only add a round trip through the object store (bench/fetch_dask.py)."""
    from evalstack.cache.executors import executor_settings, plain_tcp_warning

    name, settings = executor_settings(params)
    remote = getattr(store, "remote", None)
    if name != "dask" or not settings.get("address") or remote is None:
        yield None
        return
    address = str(settings["address"])
    rows_per_task = int((params.get("fetch") or {}).get("rows_per_task", ROWS_PER_TASK))
    with contextlib.ExitStack() as stack:
        def connect() -> Any:
            from distributed import Client

            warning = plain_tcp_warning(address)
            if warning:
                print(f"WARNING {warning}", file=sys.stderr)
            return stack.enter_context(Client(address))

        yield ClusterFetch(remote, connect, rows_per_task)
