"""Append-aware registry parsing: a local registry that only grew is parsed from where the last parse ended.

A PAD registry grows by rows appended at its end (new cards get new ids). Parsing and checking a row costs
~0.1 ms, 20 s at 200,000 rows, on every fetch: most of a +1 % rerun (bench P12). So the last parse of each
local registry is kept: the rows as parsed and checked, how many bytes were parsed (always up to a newline)
and their sha256. When the file's first bytes still hash to that digest, those rows are read back and only
the bytes after them are parsed. Anything else (a row edited, removed or reordered, a new header, a parser
whose code changed, a file that ends mid-row) parses the whole file, as before. Either way the rows are the
same, so the listing stays a function of the file's bytes (tests/test_registry_prefix.py builds one raw layer
incrementally and at once and compares them).

Every row read back still goes through the caller's location check (`check_row_location`: where a row may
point depends on the filesystem now, not when it was parsed). The kept parse is found by a key of what
else decides the rows (the registry's folder, which resolves relative URLs; the split; the allowed schemes
and roots; the code that parses and checks, by the same import-closure digest as cache keys), and is read only after its file's sha256 matches the one recorded beside it.

Kept in the fetch history (`<store>/fetch/registries/`): `<key>.sqlite` (the rows) and `<key>.json`.
"""
from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import io
import json
import os
import secrets
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence
from urllib.parse import urljoin

from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.fingerprint import code_part
from evalstack.core.keys import sha256_file
from evalstack.sources.registry import RegistryRow, iter_registry, registry_header

_FIELDS = tuple(f.name for f in dataclasses.fields(RegistryRow))
_CHUNK = 1 << 20
_BATCH = 5000
_CODE = ("evalstack.sources.catalog", "evalstack.sources.registry_prefix")  # parse and check a row (+ imports)


@dataclass
class ParseCounts:
    """What one listing parsed and what it read back, per the whole source (the fetch report shows them)."""

    parsed: int = 0
    reused: int = 0


@dataclass(frozen=True)
class LastParse:
    n_bytes: int  # the registry's first n_bytes were parsed (they end with a newline) ...
    sha256: str  # ... and hash to this
    header: list[str]
    n_rows: int
    rows_file: Path

    def rows(self) -> Iterator[RegistryRow]:
        db = sqlite3.connect(f"file:{self.rows_file}?mode=ro", uri=True)
        try:
            for record in db.execute("SELECT * FROM rows ORDER BY pos"):
                yield RegistryRow(*record[1:])
        finally:
            db.close()


def parse_key(url: str, split: str, context: Sequence[str]) -> str:
    """What decides a registry's rows besides its bytes. The folder, not the file: a relative image URL
    resolves against it, and the same rows under another file name in that folder are the same rows."""
    return hashlib.sha256(json.dumps([code_part(*_CODE), urljoin(url, "."), split, list(context)],
                                     sort_keys=True).encode()).hexdigest()


def rows_appended(raw: BinaryIO, url: str, split: str, context: Sequence[str], directory: Path,
                  counts: ParseCounts, check: Callable[[RegistryRow], None]) -> Iterator[RegistryRow]:
    """The registry's rows (`raw`: the open file, at its start), reading back the last parse's rows when the
    file begins with the bytes they came from; records this parse for the next one."""
    key = parse_key(url, split, context)
    last = load_last_parse(directory, key)
    reader = _Reader(raw)
    if last is not None and reader.starts_with(last):
        for row in last.rows():
            check(row)
            counts.reused += 1
            yield row
        header, first_line, lines = last.header, last.n_rows + 2, _lines(reader, "utf-8")
    else:
        raw.seek(0)
        last, reader = None, _Reader(raw)
        lines = _lines(reader, "utf-8-sig")  # a BOM is dropped, as `open(encoding="utf-8-sig")` drops it
        header, first_line = registry_header(next(lines, "")), 2
    writer = _RowsWriter(directory, key, last)
    tail = _RowLines(lines)
    try:
        for row in iter_registry(tail, split, url, header, first_line):
            tail.row_ended()
            check(row)
            writer.add(row)
            counts.parsed += 1
            yield row
        grew = last is None or reader.n_bytes > last.n_bytes
        if grew and reader.last_byte == b"\n" and tail.ends_between_rows():
            writer.commit(LastParse(reader.n_bytes, reader.hasher.hexdigest(), header, writer.n_rows, Path()))
    finally:
        writer.discard()


def load_last_parse(directory: Path, key: str) -> LastParse | None:
    """The kept parse under `key`, or None when there is none or its rows file is not the one recorded."""
    rows_file, record_file = directory / f"{key}.sqlite", directory / f"{key}.json"
    try:
        record = json.loads(record_file.read_text())
        if record["key"] != key or sha256_file(rows_file) != record["rows_sha256"]:
            return None
        return LastParse(int(record["n_bytes"]), str(record["sha256"]), list(record["header"]),
                         int(record["n_rows"]), rows_file)
    except (OSError, ValueError, KeyError, TypeError):
        return None


class _Reader:
    """`raw` read in chunks, every byte fed to a sha256, counted, and watched for where the file ends."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.hasher, self.n_bytes = raw, hashlib.sha256(), 0
        self.last_byte = b""

    def read(self, size: int = _CHUNK) -> bytes:
        chunk = self.raw.read(size)
        if chunk:
            self.hasher.update(chunk)
            self.n_bytes += len(chunk)
            self.last_byte = chunk[-1:]
        return chunk

    def starts_with(self, last: LastParse) -> bool:
        """Whether the first `last.n_bytes` hash to `last.sha256`; the reader stays just after them."""
        while self.n_bytes < last.n_bytes:
            if not self.read(min(_CHUNK, last.n_bytes - self.n_bytes)):
                return False
        return self.hasher.hexdigest() == last.sha256


class _RowLines:
    """The lines the CSV reader takes, remembering those since the last row began: what tells whether the
    file ends between rows or inside a quoted field the reader closed only because the file ended.

    Only a prefix that ends between rows may be kept, since rows appended after it are then parsed as they
    would be in the whole file. Counting quote characters cannot tell: a '"' inside an unquoted field
    (`5"phone`) is text to the csv module, and would make an open quote at the end look closed."""

    _SENTINEL = "evalstack: end of the kept prefix"

    def __init__(self, lines: Iterator[str]):
        self.lines = lines
        self.since_last_row: list[str] = []  # lines taken after the last row ended (blank lines, a header)
        self.last_row: list[str] = []  # the lines the last row was read from

    def __iter__(self) -> "_RowLines":
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.since_last_row.append(line)
        return line

    def row_ended(self) -> None:
        """The reader gave a row: the lines it took since the one before are that row (it reads no further)."""
        self.last_row, self.since_last_row = self.since_last_row, []

    def ends_between_rows(self) -> bool:
        """Whether one more line after these would be a row of its own, as the csv module parses them. The
        last row began between rows, so its lines alone decide; the rows before it cannot change that."""
        try:
            parsed = list(csv.reader([*self.last_row, *self.since_last_row, self._SENTINEL + "\n"]))
        except csv.Error:
            return False
        return bool(parsed) and parsed[-1] == [self._SENTINEL]


def _lines(reader: _Reader, encoding: str) -> Iterator[str]:
    """The file's lines from where `reader` is, split as `open(..., newline="")` splits them (the CSV
    module's way)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    pending = ""
    while chunk := reader.read():
        lines = io.StringIO(pending + decoder.decode(chunk), newline="").readlines()
        # The last line may go on in the next chunk (a '\r' may be half of a '\r\n').
        pending = lines.pop() if lines and not lines[-1].endswith("\n") else ""
        yield from lines
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


class _RowsWriter:
    """The rows of this parse, into a temporary SQLite file that replaces the kept one on `commit`."""

    def __init__(self, directory: Path, key: str, last: LastParse | None):
        self.directory, self.key, self.last = directory, key, last
        self.path = directory / f"{key}.{secrets.token_hex(4)}.tmp"
        self.n_rows = last.n_rows if last is not None else 0
        self.db: sqlite3.Connection | None = None
        self.batch: list[tuple] = []
        self.failed = False  # the disk said no: this parse is not kept, which costs the next fetch a full parse

    def _open(self) -> sqlite3.Connection:
        if self.db is None:  # opened at the first new row: a registry that did not grow copies nothing
            self.directory.mkdir(parents=True, exist_ok=True)
            if self.last is not None:  # the kept rows stay: this parse appends after them
                shutil.copyfile(self.last.rows_file, self.path)
            self.db = sqlite3.connect(self.path)
            self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + (
                "" if self.last is not None else
                f"CREATE TABLE rows (pos INTEGER PRIMARY KEY, {', '.join(_FIELDS)});"))
        return self.db

    def add(self, row: RegistryRow) -> None:
        self.batch.append((self.n_rows, *(getattr(row, name) for name in _FIELDS)))
        self.n_rows += 1
        if len(self.batch) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        try:
            if not self.failed:
                self._open().executemany(f"INSERT INTO rows VALUES ({', '.join('?' * (len(_FIELDS) + 1))})",
                                         self.batch)
        except (OSError, sqlite3.Error):
            self.failed = True
        self.batch.clear()

    def commit(self, parse: LastParse) -> None:
        """Keep this parse: the rows file first, then the record that names its sha256 (a crash between the
        two leaves a record that does not match, which only costs the next fetch a full parse)."""
        self._flush()
        try:
            if self.failed:
                return
            self.db = self._open()
            self.db.commit()
            self.db.close()
            self.db = None
            record = {"key": self.key, "n_bytes": parse.n_bytes, "sha256": parse.sha256, "header": parse.header,
                      "n_rows": parse.n_rows, "rows_sha256": sha256_file(self.path)}
            os.replace(self.path, self.directory / f"{self.key}.sqlite")
            atomic_write_bytes(self.directory / f"{self.key}.json", json.dumps(record).encode())
        except (OSError, sqlite3.Error):
            self.failed = True

    def discard(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        self.path.unlink(missing_ok=True)
