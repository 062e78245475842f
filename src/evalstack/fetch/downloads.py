"""Getting the bytes of many items at once: a bounded thread pool, each image checked once.

Every image that arrives is md5-checked (when the source states an md5) and decoded in
full once (pixel cap, truncation). Bytes from a remote source are written atomically to
the download area of the fetch history, so a fetch that fails or is killed never
downloads them again; bytes of a local file stay where they are (reading them again
costs nothing) and are read again, checked, when their shard is written. What arrived
— item key (sha256), length and where the bytes are — goes to the caller as each run of
rows finishes: fetch/shard_stream.py writes shards from it while the downloads go on,
and keeps it in fetch's listing database, so memory does not grow with the number of
items. Failures are collected per item, never raised from a worker: the caller applies
the policy.
"""
from __future__ import annotations

import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TypeVar
from urllib.parse import urlparse

from tqdm import tqdm

from evalstack.core.keys import sha256_bytes
from evalstack.fetch.history import RawHistory
from evalstack.sources.images import accepted, check_image
from evalstack.sources.registry import RegistryRow, SourceError
from evalstack.sources.transport import SourceUnreachable, Transport, Validators

T = TypeVar("T")
AREA, SOURCE = "area", "source"  # where an arrived item's bytes are: the download area, or the local source file
# Rows per task: one task per row cost ~0.5 ms of scheduling and lock hand-offs per small image,
# more than reading, md5-checking and decoding it (0.24 ms for 64×64). Concurrency stays `workers`.
_CHUNK_ROWS = 16


@dataclass(frozen=True)
class Failure:
    id: int
    image_name: str
    url: str
    cause: str

    @classmethod
    def of(cls, row: RegistryRow, cause: str) -> "Failure":
        prefix = f"{row.what}: "
        return cls(row.id, row.image_name, row.url, cause[len(prefix):] if cause.startswith(prefix) else cause)


@dataclass
class DownloadOutcome:
    downloaded: int = 0  # items read from the source in this run (not found in the download area)
    failures: list[Failure] = field(default_factory=list)
    unreachable: str = ""  # set when the source went away mid-fetch: the rest was not attempted
    activity: dict[str, int] = field(default_factory=dict)  # what else the report's activity shows (Dask fetch)
    # (URL, item key, validators) of downloads the source names by URL alone (fetch/revalidate.py keeps them)
    validators: list[tuple[str, str, Validators]] = field(default_factory=list)


Arrival = tuple[int, str, int, str]  # (id, item key, length, AREA | SOURCE)


def is_local(row: RegistryRow) -> bool:
    return urlparse(row.resolved_url).scheme == "file"


def download_items(
    rows: Iterable[RegistryRow], total: int | None, transport: Transport, history: RawHistory, max_pixels: int,
    workers: int, record: Callable[[list[Arrival]], None],
) -> DownloadOutcome:
    """Get the bytes of `rows` (`total` of them): from the download area when an earlier run left them
    there, else from the source. `record` receives the arrivals of each run of rows as it ends.
    (`total` None: not counted.)"""
    outcome = DownloadOutcome()
    stop = threading.Event()  # once the host is unreachable, queued items are not tried one by one

    def fetch_one(row: RegistryRow) -> tuple[Arrival, bool]:
        if history.has_download(row):  # arrived in a run that stopped short: checked again, not downloaded
            data = history.load_download(row)
            # Checked under its own run's caps and checks: checked again under today's (a few items: ones
            # removed and listed again, or left by a fetch that stopped). One they refuse is downloaded and
            # checked below, so it fails with the message a fetch from nothing gives.
            if data is not None and len(data) <= transport.config.max_bytes and accepted(data, max_pixels):
                return (row.id, sha256_bytes(data), len(data), AREA), False
        if stop.is_set():
            raise SourceError("not attempted: the source became unreachable")
        data, validators = transport.get_validated(row.resolved_url, row.what, row.hashlib_md5)
        check_image(data, max_pixels, row.what)
        key = sha256_bytes(data)
        if is_local(row):
            return (row.id, key, len(data), SOURCE), True
        history.save_download(row, data)
        if not row.hashlib_md5:  # named by its URL alone: the next fetch asks whether the URL changed
            outcome.validators.append((row.resolved_url, key, validators))
        return (row.id, key, len(data), AREA), True

    def fetch_chunk(chunk: list[RegistryRow]) -> list[tuple[RegistryRow, tuple[Arrival, bool] | SourceError]]:
        out: list[tuple[RegistryRow, tuple[Arrival, bool] | SourceError]] = []
        for row in chunk:
            try:
                out.append((row, fetch_one(row)))
            except SourceUnreachable as error:
                stop.set()  # the rest of this chunk and of the queue is not attempted
                out.append((row, error))
            except SourceError as error:
                out.append((row, error))
        return out

    workers = max(1, workers)
    with tqdm(total=total, desc="fetch", unit="card", disable=total == 0) as progress, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
        for future in _bounded(pool, fetch_chunk, chunks(rows, _CHUNK_ROWS), in_flight=2 * workers):
            results = future.result()
            arrivals: list[Arrival] = []
            for row, result in results:
                if isinstance(result, SourceError):
                    if isinstance(result, SourceUnreachable):
                        outcome.unreachable = outcome.unreachable or str(result)
                    outcome.failures.append(Failure.of(row, str(result)))
                    continue
                arrival, downloaded = result
                arrivals.append(arrival)
                outcome.downloaded += downloaded
            if arrivals:
                record(arrivals)  # as each run arrives: fetch writes shards while the downloads go on
            progress.update(len(results))
            progress.set_postfix_str(f"{transport.bytes / 1e6:.1f} MB, {transport.gets} GETs "
                                     f"({transport.retries} retries)", refresh=False)
    outcome.failures.sort(key=lambda failure: failure.id)
    return outcome


def chunks(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive runs of `size` rows (the last may be shorter), streamed."""
    chunk: list[T] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _bounded(pool: ThreadPoolExecutor, work, chunks: Iterable[list[RegistryRow]], in_flight: int) -> Iterator[Future]:
    """Futures as each finishes, with at most `in_flight` submitted at a time: a future per
    row up front would cost memory in proportion to the registry (~1 KB each, 200 MB at 200k items)."""
    pending: set[Future] = set()
    queue = iter(chunks)
    while True:
        for chunk in queue:
            pending.add(pool.submit(work, chunk))
            if len(pending) >= in_flight:
                break
        if not pending:
            return
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from done


SHOWN_FAILURES = 5  # the console lists this many; the report lists all


def warn_skipped(failures: list[Failure], report: object = None) -> None:
    """Say on the console how many items `on_error: skip` left out, and which (the first few)."""
    where = f"; all {len(failures)} with their causes in {report}" if report else ""
    lines = [f"WARNING skipped {len(failures)} item{'s' if len(failures) != 1 else ''} that failed "
             f"(on_error: skip){where}:"]
    lines += [f"  id {f.id} ({f.image_name}): {f.cause}" for f in failures[:SHOWN_FAILURES]]
    if len(failures) > SHOWN_FAILURES:
        lines.append(f"  … and {len(failures) - SHOWN_FAILURES} more")
    print("\n".join(lines), file=sys.stderr)
