"""Items a server names by URL alone are asked again on every fetch: has the URL changed since its bytes came?

A source that states no md5 (the PAD API's cards) identifies an item by id and URL, so a re-fetch reuses
the bytes it has for that pair. A server may replace an image at the same URL (a card reprocessed): a fetch
from nothing then gets the new bytes while a warm one kept the old, exit 0. So each such item kept from the
last layer (or from the download area) is checked with one HEAD request against the validators its GET
answered with, the way an HTTP cache revalidates (RFC 9110 §8.8): a strong ETag when the server gives one,
else Last-Modified with Content-Length. An item is downloaded again when its validators differ, when none
are recorded (its bytes came before this check existed, or from another machine's layer), or when its server answers HEAD without any or with a redirect (HEAD follows none); bytes equal to
the old ones leave every shard as it was. What HTTP validators cannot tell apart, neither can this: a file
replaced within the same second by one of the same length, on a server that sends no ETag.

Validators are kept in the fetch history (`<store>/fetch/validators.sqlite`), by URL and the sha256 of the
bytes they were given with; without a store they live as long as the fetch, so every such item is
downloaded again.
"""
from __future__ import annotations

import sqlite3
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from evalstack.core.keys import sha256_bytes
from evalstack.fetch.downloads import chunks
from evalstack.fetch.history import RawHistory
from evalstack.fetch.listing import Listing
from evalstack.sources.transport import SourceUnreachable, Transport, Validators

_BATCH = 2000  # items asked per batch
_SCHEMA = ("CREATE TABLE IF NOT EXISTS seen (url TEXT, item_key TEXT, etag TEXT, last_modified TEXT, length TEXT, "
           "PRIMARY KEY (url, item_key))")


class ValidatorBook:
    """Validators by (URL, sha256 of the bytes they came with), in the fetch history. Used from one thread.

    It is a cache: a book that cannot be read (damaged, locked past the timeout, on a full or read-only disk)
    says so once, naming its file, and counts as empty, which only costs downloads."""

    def __init__(self, directory: Path):
        self.path = directory / "validators.sqlite"
        self.db: sqlite3.Connection | None = None
        self.warned = False
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60)  # a store shared by checkouts: wait for the other
            self.db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            self._unusable(error)
            if isinstance(error, sqlite3.DatabaseError) and "not a database" in str(error):
                self.path.unlink(missing_ok=True)  # damaged: the next fetch starts a new one

    def _unusable(self, error: Exception) -> None:
        if self.db is not None:
            self.db.close()
        self.db = None
        if not self.warned:
            self.warned = True
            print(f"WARNING {self.path}: {error}; cards the source names by URL alone are downloaded again",
                  file=sys.stderr)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    def __enter__(self) -> "ValidatorBook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def recorded(self, url: str, item_key: str) -> Validators | None:
        if self.db is None:
            return None
        try:
            found = self.db.execute("SELECT etag, last_modified, length FROM seen WHERE url = ? AND item_key = ?",
                                    (url, item_key)).fetchone()
        except sqlite3.Error as error:
            self._unusable(error)
            return None
        return Validators(*found) if found else None

    def record(self, seen: Iterable[tuple[str, str, Validators]]) -> None:
        """(URL, item key, validators) of bytes just downloaded; those without validators are not kept."""
        rows = [(url, key, v.etag, v.last_modified, v.length) for url, key, v in seen if v.usable]
        if rows and self.db is not None:
            try:
                with self.db:
                    self.db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?, ?)", rows)
            except sqlite3.Error as error:
                self._unusable(error)


def changed_at_url(items: Iterable[tuple[int, str, str]], transport: Transport, book: ValidatorBook,
                   workers: int) -> list[int]:
    """Of (id, URL, item key of the bytes at hand), the ids whose bytes must be downloaded again: the URL's
    validators now differ from those recorded with these bytes, or there is nothing to compare. Once the host
    cannot be reached, the rest are not asked (their downloads then stop the fetch, naming the cause)."""
    stale: list[int] = []
    unreachable = threading.Event()

    def changed(item: tuple[int, str, Validators]) -> bool:
        _, url, recorded = item
        if unreachable.is_set():
            return True
        try:
            now = transport.head(url, f"item at {url}")
        except SourceUnreachable:
            unreachable.set()
            return True
        return now is None or not now.usable or not now.same_bytes_as(recorded)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="revalidate") as pool, \
            tqdm(desc="revalidate", unit="card", disable=None) as progress:
        for batch in chunks(items, _BATCH):  # in batches: memory stays flat in the number of cards
            asked = []
            for item_id, url, item_key in batch:
                recorded = book.recorded(url, item_key)
                if recorded is None:
                    stale.append(item_id)
                else:
                    asked.append((item_id, url, recorded))
            stale += [item[0] for item, verdict in zip(asked, pool.map(changed, asked)) if verdict]
            progress.update(len(batch))
    return sorted(stale)


def revalidate(listing: Listing, transport: Transport, history: RawHistory, workers: int) -> dict[str, int]:
    """Before anything is downloaded: forget kept items whose URL may serve other bytes now, and drop such
    items' copies in the download area, so both are downloaded again. Returns counts for the report."""
    with ValidatorBook(history.directory) as book:
        kept = _Counted(listing.kept_by_url())
        changed = changed_at_url(kept, transport, book, workers)
        listing.forget_previous(changed)
        waiting = []
        for row in listing.needing_bytes_by_url():
            data = history.load_download(row)  # None when the area holds none
            if data is not None:
                waiting.append((row, sha256_bytes(data)))
        rows = {row.id: row for row, _ in waiting}
        stale = changed_at_url([(row.id, row.resolved_url, key) for row, key in waiting], transport, book, workers)
        history.drop_downloads(rows[item_id] for item_id in stale)
    return {"revalidated": kept.count + len(waiting), "changed_or_unvalidated": len(changed) + len(stale)}


def record_validators(history: RawHistory, seen: list[tuple[str, str, Validators]]) -> None:
    """Keep the validators downloads of URL-named items came with, for the next fetch's `revalidate`."""
    if seen:
        with ValidatorBook(history.directory) as book:
            book.record(seen)


class _Counted:
    """An iterable that counts what went through it (the report's `revalidated`, without a list in memory)."""

    def __init__(self, items: Iterable[tuple[int, str, str]]):
        self.items, self.count = items, 0

    def __iter__(self):
        for item in self.items:
            self.count += 1
            yield item
