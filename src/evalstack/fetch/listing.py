"""Fetch's working set on disk: the source's listing, the previous raw layer's rows, what arrived.

A registry of 200,000 images is 200,000 row records; held as Python objects that is
~1 KB each, and fetch's memory would grow with the dataset. Instead fetch streams the
listing into a scratch SQLite file (stdlib, one file, deleted when fetch ends) and reads
it back in id order one row at a time. Three tables:

- `listed`: every row the source lists; the id is the primary key, so a duplicate id is
  refused as the row arrives, and reading back in key order is reading in id order;
- `previous`: where each item of the previous raw layer is (shard, row), its identity,
  item key, byte length, pixel count and metadata: what lets fetch reuse bytes and whole shard
  files, and check kept items against today's caps without opening them;
- `arrived`: items whose bytes were fetched in this run (or found in the download area),
  with their item key and length, and where the bytes are now (`area` or `source`).

Memory stays flat in the number of items (bench P12 measures it); the cost is a few
microseconds per row of SQLite work.
"""
from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from evalstack.core.atomic import DiskFullError
from evalstack.core.kinds import META_FIELDS
from evalstack.core.layers import ITEM_KEY, ShardColumns, ShardInfo
from evalstack.fetch.livemarks import LiveMark
from evalstack.sources.registry import RegistryRow, SourceError, check_unique_ids

ROW_FIELDS = (*META_FIELDS, "resolved_url")  # RegistryRow's fields, in order
_OLD = tuple(f"old_{name}" for name in META_FIELDS[1:])  # the previous layer's metadata besides its id (the key)
# The previous layer's rows: (column, declared type). The metadata columns have none (see _META_EQUAL).
_PREVIOUS_COLUMNS = (("id", "INTEGER PRIMARY KEY"), ("ident", "TEXT"), ("shard", "INTEGER"), ("row", "INTEGER"),
                     ("item_key", "TEXT"), ("length", "INTEGER"), ("pixels", "INTEGER"), *((name, "") for name in _OLD))
_PREVIOUS = tuple(name for name, _ in _PREVIOUS_COLUMNS)
_BATCH = 5000
_SCHEMA = f"""
CREATE TABLE listed (id INTEGER PRIMARY KEY, {", ".join(f"{name}" for name in ROW_FIELDS[1:])});
CREATE TABLE previous ({", ".join(f"{name} {kind}".rstrip() for name, kind in _PREVIOUS_COLUMNS)});
CREATE TABLE arrived (id INTEGER PRIMARY KEY, item_key TEXT, length INTEGER, origin TEXT);
"""
# The identity of a listed row as `RegistryRow.identity` spells it: md5, or the URL when none is stated.
_IDENT = "CASE WHEN listed.hashlib_md5 != '' THEN listed.hashlib_md5 ELSE 'url:' || listed.url END"
# Whether the previous layer's row had exactly the listed row's metadata (the join already matched the ids).
# The columns have no declared type, so SQLite keeps each value's own (int or text) and compares as Python's
# `==` on the two tuples does: an int never equals a text, text is compared byte for byte. Compared in SQL,
# not as JSON text made in Python for both sides: that was ~1 s of every fetch at 200,000 rows.
_META_EQUAL = " AND ".join(f"previous.{old} IS listed.{name}" for old, name in zip(_OLD, META_FIELDS[1:]))


def identity_text(row: RegistryRow) -> str:
    return row.identity[1]


def pixel_counts(reader: ShardColumns) -> list[int] | None:
    """A raw shard's `pixels` column, or None for a shard written before raw shards recorded it."""
    if "pixels" not in reader.arrays and "pixels" not in reader.handle:
        return None
    return [int(n) for n in reader.read("pixels")]


@dataclass(frozen=True)
class ListedItem:
    """One listed row in id order, with what is known about its bytes."""

    row: RegistryRow
    old: tuple[int, int] | None  # (previous shard number, row) holding the same image (same id and md5)
    old_meta_equal: bool  # the previous layer's row had exactly this metadata
    item_key: str | None  # sha256 of the bytes, when known (old or arrived)
    length: int | None
    origin: str  # "old" | "area" | "source" | "" (no bytes: failed or not fetched)


class Listing:
    """The scratch database of one fetch (see the module docstring); close() deletes it."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"listing-{secrets.token_hex(6)}.sqlite"
        self._mark = LiveMark(self.path)  # before the database: another checkout's sweep leaves it alone
        try:
            self.db = sqlite3.connect(self.path)
            self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA temp_store=FILE;" + _SCHEMA)
        except BaseException:
            self.path.unlink(missing_ok=True)
            self._mark.release()
            raise
        self.n_listed = 0
        self.n_previous = 0

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)
        self._mark.release()

    def __enter__(self) -> "Listing":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- filling ----------------------------------------------------------------------------
    def add_rows(self, rows: Iterable[RegistryRow], origins: Mapping[str, str] | None = None) -> int:
        """Insert the source's rows (any order); a repeated id is refused naming both rows (and, with
        `origins` (split → registry URL), both registries). Returns the count."""
        batch: list[tuple] = []
        for row in rows:
            batch.append(tuple(getattr(row, name) for name in ROW_FIELDS))
            if len(batch) >= _BATCH:
                self._insert(batch, origins)
        self._insert(batch, origins)
        return self.n_listed

    def _insert(self, batch: list[tuple], origins: Mapping[str, str] | None) -> None:
        try:
            with self.db:
                self.db.executemany(f"INSERT INTO listed VALUES ({', '.join('?' * len(ROW_FIELDS))})", batch)
        except sqlite3.IntegrityError:
            self._name_duplicate(batch, origins)
        except sqlite3.OperationalError as error:
            if "full" in str(error):  # SQLite's "database or disk is full"
                raise DiskFullError(self.path) from None
            raise
        self.n_listed += len(batch)
        batch.clear()

    def _name_duplicate(self, batch: list[tuple], origins: Mapping[str, str] | None) -> None:
        """Raise the error `check_unique_ids` raises for the first id this batch repeats."""
        earlier: dict[int, RegistryRow] = {}
        for record in batch:
            row = RegistryRow(*record)
            stored = self.db.execute("SELECT * FROM listed WHERE id = ?", (row.id,)).fetchone()
            first = earlier.get(row.id) or (RegistryRow(*stored) if stored else None)
            if first is not None:
                check_unique_ids([first, row], origins)
            earlier[row.id] = row
        raise SourceError("duplicate id in the registry")  # not reached: the insert failed on one

    def add_previous_shard(self, number: int, shard: ShardInfo, path: Path,
                           md5_only: bool = False) -> tuple[list[tuple], bool]:
        """Record the rows of the previous layer's shard `number`; returns their metadata tuples, and whether
        the shard records its images' pixel counts (a shard written before it did records none).
        `md5_only`: leave out rows the source identified by URL alone (no md5 stated)."""
        with ShardColumns(path, shard) as reader:
            columns = {name: reader.read(name) for name in META_FIELDS}
            keys = [str(key) for key in reader.read(ITEM_KEY)]
            lengths = [int(n) for n in reader.read("length")]
            counted = pixel_counts(reader)
            pixels = counted if counted is not None else [None] * len(keys)
        metas = [
            tuple(int(columns[name][r]) if name in ("id", "sample_id", "quantity") else str(columns[name][r])
                  for name in META_FIELDS)
            for r in range(len(keys))
        ]
        records = []
        for row, (meta, key, length, count) in enumerate(zip(metas, keys, lengths, pixels)):
            listed = RegistryRow(*meta)
            if md5_only and not listed.hashlib_md5:
                continue
            records.append((listed.id, identity_text(listed), number, row, key, length, count, *meta[1:]))
        with self.db:
            self.db.executemany(f"INSERT OR IGNORE INTO previous VALUES ({', '.join('?' * len(_PREVIOUS))})", records)
        self.n_previous += len(records)
        return metas, counted is not None

    # Only rows the listing still has: a removed one stays removed (its bytes go to the fetch history, and
    # when it is listed again the history's copy is checked as a download is).
    _STILL_LISTED = f"EXISTS (SELECT 1 FROM listed WHERE listed.id = previous.id AND {_IDENT} = previous.ident)"

    def forget_previous(self, ids: list[int]) -> int:
        """Treat these previous items, where still listed, as never fetched (they are downloaded and checked
        again); returns how many there were."""
        with self.db:
            forgotten = self.db.executemany(f"DELETE FROM previous WHERE id = ? AND {self._STILL_LISTED}",
                                            [(i,) for i in ids]).rowcount
        return max(forgotten, 0)

    def forget_previous_above(self, max_pixels: int, max_bytes: int) -> int:
        """`forget_previous` for every previous item above `max_pixels` pixels or `max_bytes` bytes."""
        with self.db:
            return self.db.execute(f"DELETE FROM previous WHERE (pixels > ? OR length > ?) AND {self._STILL_LISTED}",
                                   (max_pixels, max_bytes)).rowcount

    def add_arrivals(self, arrivals: list[tuple[int, str, int, str]]) -> None:
        """(id, item key, length, origin) of items whose bytes are now at hand."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO arrived VALUES (?, ?, ?, ?)", arrivals)

    # -- reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_listed

    def count_without_md5(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM listed WHERE hashlib_md5 = ''").fetchone()[0]

    def before_arrivals(self) -> Iterator[ListedItem]:
        """Every listed row in id order, joined with its previous location, not with its arrival: it is read
        while downloads write the `arrived` table. An item no previous shard holds comes with origin "" (the
        caller joins its arrival: fetch/shard_stream.py)."""
        query = f"""
            SELECT listed.*, previous.shard, previous.row, previous.item_key, previous.length, {_META_EQUAL}
            FROM listed LEFT JOIN previous ON previous.id = listed.id AND previous.ident = {_IDENT}
            ORDER BY listed.id"""
        n = len(ROW_FIELDS)
        for record in self._records(query):
            row = RegistryRow(*record[:n])
            shard, old_row, old_key, old_length, meta_equal = record[n:]
            if shard is not None:
                yield ListedItem(row, (shard, old_row), bool(meta_equal), old_key, old_length, "old")
            else:
                yield ListedItem(row, None, False, None, None, "")

    def needing_bytes(self) -> Iterator[RegistryRow]:
        """Listed rows, in id order, whose image no previous shard holds (same id and md5).
        (The `arrived` table is left out of the query: it is written while this is read.)"""
        query = f"""
            SELECT listed.* FROM listed LEFT JOIN previous ON previous.id = listed.id AND previous.ident = {_IDENT}
            WHERE previous.id IS NULL ORDER BY listed.id"""
        for record in self._records(query):  # in batches: download threads run while these are read
            yield RegistryRow(*record)

    _BY_URL = "listed.hashlib_md5 = '' AND (listed.resolved_url LIKE 'http://%' OR listed.resolved_url LIKE 'https://%')"

    def kept_by_url(self) -> Iterator[tuple[int, str, str]]:
        """(id, URL, item key) of previous items still listed that the source names by URL alone, on a server
        (fetch/revalidate.py asks the server whether each URL still serves those bytes)."""
        query = f"""
            SELECT listed.id, listed.resolved_url, previous.item_key FROM listed
            JOIN previous ON previous.id = listed.id AND previous.ident = {_IDENT}
            WHERE {self._BY_URL} ORDER BY listed.id"""
        yield from self._records(query)

    def needing_bytes_by_url(self) -> Iterator[RegistryRow]:
        """`needing_bytes` of the rows the source names by URL alone, on a server."""
        query = f"""
            SELECT listed.* FROM listed LEFT JOIN previous ON previous.id = listed.id AND previous.ident = {_IDENT}
            WHERE previous.id IS NULL AND {self._BY_URL} ORDER BY listed.id"""
        for record in self._records(query):
            yield RegistryRow(*record)

    def _records(self, query: str, batch: int = 2000) -> Iterator[tuple]:
        """The query's rows read `batch` at a time. SQLite steps release the GIL one row at a time, so
        reading row by row while download threads run would wait for the GIL on every row."""
        cursor = self.db.execute(query)
        while records := cursor.fetchmany(batch):
            yield from records

    def count_needing_bytes(self) -> int:
        query = f"""SELECT COUNT(*) FROM listed LEFT JOIN previous ON previous.id = listed.id
                    AND previous.ident = {_IDENT} WHERE previous.id IS NULL"""
        return self.db.execute(query).fetchone()[0]

    def removed(self) -> Iterator[tuple[RegistryRow, int, int]]:
        """(row as last fetched, shard number, row) of every previous item the listing no longer has
        (same id and md5; an item whose md5 changed counts as removed and new)."""
        query = f"""
            SELECT previous.shard, previous.row, previous.id, {", ".join(f"previous.{old}" for old in _OLD)}
            FROM previous
            WHERE NOT EXISTS (SELECT 1 FROM listed WHERE listed.id = previous.id AND {_IDENT} = previous.ident)
            ORDER BY previous.id"""
        for shard, row, *meta in self.db.execute(query):
            yield RegistryRow(*meta), shard, row

    def count_removed(self) -> int:
        query = f"""SELECT COUNT(*) FROM previous WHERE NOT EXISTS
                    (SELECT 1 FROM listed WHERE listed.id = previous.id AND {_IDENT} = previous.ident)"""
        return self.db.execute(query).fetchone()[0]

    def arrived_in_area(self) -> Iterator[RegistryRow]:
        """Rows whose bytes came from the download area in this run (to drop once in a recorded layer)."""
        query = "SELECT listed.* FROM listed JOIN arrived ON arrived.id = listed.id WHERE arrived.origin = 'area'"
        for record in self.db.execute(query):
            yield RegistryRow(*record)
