"""Item records, registry and labels CSV parsing, name/URL safety (image checks: sources/images.py).

The registry CSV layout is PAD's (`pad_dataset_registry`): one row per card photo,
`url` pointing at the image and `hashlib_md5` stating its checksum. A relative
`url` is resolved against the registry's own location, so the embedded dataset
and a copy served over HTTP use the same rows. Every source (registry, PAD API,
local folder) yields the same `RegistryRow` records; a source that states no
checksum (the PAD API) leaves `hashlib_md5` empty, and the raw layer keeps it so.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping
from urllib.parse import unquote, urljoin, urlparse

from evalstack.core.kinds import META_FIELDS
from evalstack.sources.errors import SourceError  # re-exported: sources and stages import it from here

REGISTRY_COLUMNS = ("id", "sample_id", "sample_name", "quantity", "camera_type_1", "url", "hashlib_md5", "image_name")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,199}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)  # slots: one per registry row, so memory per row matters
class RegistryRow:
    id: int
    sample_id: int
    sample_name: str
    quantity: int
    camera_type_1: str
    url: str
    hashlib_md5: str  # "" when the source states no checksum (PAD API): nothing was checked
    image_name: str
    split: str
    resolved_url: str = ""  # where to download from; not stored, it can be machine-specific

    @property
    def what(self) -> str:
        """How messages name this item."""
        return f"item id {self.id} ({self.image_name})"

    @property
    def identity(self) -> tuple[int, str]:
        """What says two rows name the same image bytes: id + md5, or id + URL when no md5 is stated."""
        return (self.id, self.hashlib_md5 or f"url:{self.url}")

    def metadata(self) -> tuple:
        """Everything the raw layer stores about the item besides its bytes."""
        return tuple(getattr(self, name) for name in META_FIELDS)




_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def to_url(location: str | Path) -> str:
    """A registry location as a URL: plain paths become absolute file:// URLs."""
    text = str(location)
    if _URL_SCHEME.match(text):
        return text
    return Path(text).resolve().as_uri()


def local_path(location: str) -> Path | None:
    """A source location on this disk: a plain path, or a file:// URL read as `read_local` reads it; None for
    a server."""
    url = urlparse(location)
    if url.scheme == "file":
        return Path(unquote(url.path))
    return None if _URL_SCHEME.match(location) else Path(location)


def check_scheme(url: str, allowed: tuple[str, ...]) -> None:
    scheme = urlparse(url).scheme
    if scheme not in allowed:
        raise SourceError(f"URL scheme {scheme!r} is not allowed (allowed: {', '.join(allowed)}): {url}")


DEFAULT_MAX_BYTES = 64 << 20  # per file read from a source, unless a config says otherwise
_CHUNK = 1 << 20


def read_local(url: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a file:// URL, at most `max_bytes` of them."""
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise SourceError(f"not a file:// URL: {url}")
    return read_capped(Path(unquote(parsed.path)), max_bytes, str(Path(unquote(parsed.path))))


def read_capped(path: Path, max_bytes: int, what: str) -> bytes:
    """Read a local file, refusing it as soon as more than `max_bytes` have been read.

    The cap is checked while reading, not by a size taken beforehand: a device or pipe
    (`/dev/zero`, a FIFO) says it has 0 bytes and never ends, and a file may grow.
    """
    chunks, total = [], 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(min(_CHUNK, max_bytes + 1 - total)):
                total += len(chunk)
                if total > max_bytes:
                    raise SourceError(f"{what}: more than {max_bytes} bytes (the size cap): {path}")
                chunks.append(chunk)
    except FileNotFoundError:
        raise SourceError(f"{what}: file not found: {path}") from None
    except IsADirectoryError:
        raise SourceError(f"{what}: {path} is a directory, not a file") from None
    except PermissionError:
        raise SourceError(f"{what}: permission denied reading {path}") from None
    return b"".join(chunks)


def md5_capped(path: Path, max_bytes: int) -> str:
    """md5 of a local file streamed under the size cap; "" when it is not a readable regular file or
    is larger than the cap (its download then fails with the reason, naming the item)."""
    digest = hashlib.md5(usedforsecurity=False)
    total = 0
    try:
        if not path.is_file():
            return ""
        with open(path, "rb") as handle:
            while chunk := handle.read(min(_CHUNK, max_bytes + 1 - total)):
                total += len(chunk)
                if total > max_bytes:
                    return ""
                digest.update(chunk)
    except OSError:
        return ""
    return digest.hexdigest()


def safe_name(name: str, what: str) -> str:
    """Reject names that could escape a directory or confuse a shell (they come from a server)."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise SourceError(f"unsafe {what} {name!r}: only letters, digits, '.', '_', '-' and spaces are allowed")
    return name


def safe_relative_url(url: str, what: str) -> str:
    """A relative URL from a source may not leave the source's directory: no `../`, and no absolute
    path (`/etc/x` would resolve to file:///etc/x) or network-path reference (`//other-host/x`
    would resolve to another host). A full URL with a scheme says where it goes and is checked
    against `fetch.schemes` instead."""
    if urlparse(url).scheme:
        return url
    text = unquote(url).replace("\\", "/")
    if text.startswith("//"):
        raise SourceError(f"unsafe {what} {url!r}: a network-path reference ('//host/…') would leave the "
                          "source's host; write a path relative to the registry, or a full http(s) URL")
    if text.startswith("/"):
        raise SourceError(f"unsafe {what} {url!r}: an absolute path would leave the source's directory; "
                          "write a path relative to the registry, or a full URL")
    if any(segment == ".." for segment in text.split("/")):
        raise SourceError(f"unsafe {what} {url!r}: '..' would leave the source's directory")
    return url


def parse_registry(text: str, split: str, registry_url: str) -> list[RegistryRow]:
    """Rows of a registry CSV, validated; relative image URLs resolved against `registry_url`."""
    return list(iter_registry(io.StringIO(text), split, registry_url))


def iter_registry(lines: Iterable[str], split: str, registry_url: str, header: list[str] | None = None,
                  first_line: int = 2) -> Iterator[RegistryRow]:
    """`parse_registry` over lines read as they come (an open file): memory does not grow with the registry.
    `header` and `first_line`: `lines` is a registry's tail, after the header and `first_line - 2` rows."""
    reader = _csv_reader(lines, REGISTRY_COLUMNS, f"{registry_url}: registry", header)
    for line_number, record in _records(reader, f"{registry_url}: registry", first_line):
        yield _parse_row(record, split, registry_url, line_number)


def registry_header(line: str) -> list[str]:
    """The column names of a registry's first line, as `csv.DictReader` reads them."""
    return next(csv.reader([line]), [])


def _records(reader: csv.DictReader, what: str, first_line: int = 2) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a CSV read as it streams; a file that is not CSV is a SourceError naming the line."""
    line_number = first_line - 1
    try:
        for line_number, record in enumerate(reader, start=first_line):
            yield line_number, record
    except csv.Error as error:
        raise SourceError(f"{what}: not a readable CSV after line {line_number} ({error})") from None


def _csv_reader(lines: Iterable[str] | str, required: tuple[str, ...], what: str,
                header: list[str] | None = None) -> csv.DictReader:
    reader = csv.DictReader(io.StringIO(lines) if isinstance(lines, str) else lines, fieldnames=header)
    try:
        fields = reader.fieldnames or []
    except csv.Error as error:
        raise SourceError(f"{what}: not a readable CSV ({error})") from None
    missing = [c for c in required if c not in fields]
    if missing:
        raise SourceError(f"{what} lacks columns {missing}")
    return reader


def _check_field_count(record: dict, where: str) -> None:
    # DictReader files surplus fields under None and fills missing ones with None.
    if None in record.values() or None in record:
        raise SourceError(f"{where}: malformed row: it has {'fewer' if None in record.values() else 'more'} "
                          "fields than the header")


def _parse_row(record: dict[str, str], split: str, registry_url: str, line_number: int) -> RegistryRow:
    where = f"{registry_url} line {line_number} (id {record.get('id')!r})"
    _check_field_count(record, where)
    try:
        row = RegistryRow(
            id=int(record["id"]),
            sample_id=int(record["sample_id"]),
            sample_name=record["sample_name"].strip(),
            quantity=int(float(record["quantity"])),
            camera_type_1=(record["camera_type_1"] or "").strip(),
            url=record["url"].strip(),
            hashlib_md5=record["hashlib_md5"].strip().lower(),
            image_name=record["image_name"].strip(),
            split=split,
            resolved_url=urljoin(registry_url, record["url"].strip()),
        )
    except (TypeError, ValueError, AttributeError) as error:
        raise SourceError(f"{where}: malformed row: {error}") from None
    try:
        safe_name(row.image_name, "image_name")
        safe_relative_url(row.url, "url")
    except SourceError as error:
        raise SourceError(f"{where}: {error}") from None
    if not _MD5.match(row.hashlib_md5):
        raise SourceError(f"{where}: hashlib_md5 {row.hashlib_md5!r} is not an md5 hex digest")
    return row


def check_unique_ids(rows: list[RegistryRow], origins: Mapping[str, str] | None = None) -> None:
    """Ids are unique across the whole source. `origins` (split → where its rows come from, e.g. a
    registry's URL) lets the error name both registries when two splits list the same id."""
    seen: dict[int, RegistryRow] = {}
    for row in rows:
        first = seen.get(row.id)
        if first is not None:
            where = ""
            if origins:
                places = [f"{r.split} ({origins.get(r.split, '?')})" for r in (first, row)]
                where = (f" both in registry {places[0]}" if first.split == row.split
                         else f" in registry {places[0]} and in registry {places[1]}")
            raise SourceError(f"duplicate id {row.id}{where or ' in the registry'} (images {first.image_name} and "
                              f"{row.image_name}); ids must be unique across all splits: remove or renumber one")
        seen[row.id] = row


LABEL_COLUMNS = ("id", "image_name", "sample_name")  # required; sample_id, quantity, camera_type_1, split optional


def split_for(sample_id: int, test_fraction: float) -> str:
    """A split for sources that state none, decided per sample (all its photos together)
    from a hash, so it never changes when cards are added."""
    unit = int.from_bytes(hashlib.sha256(f"split:{sample_id}".encode()).digest()[:8], "little") / 2.0**64
    return "test" if unit < test_fraction else "dev"


def parse_labels(text: str, folder_url: str, test_fraction: float) -> list[RegistryRow]:
    """Rows of a local folder's labels CSV; `image_name` is the file inside the folder."""
    return list(iter_labels(text, folder_url, test_fraction))


def iter_labels(lines: Iterable[str] | str, folder_url: str, test_fraction: float) -> Iterator[RegistryRow]:
    """`parse_labels` row by row (`lines`: the CSV text or an open file)."""
    reader = _csv_reader(lines, LABEL_COLUMNS, f"{folder_url}: labels CSV")
    for line_number, record in _records(reader, f"{folder_url}: labels CSV"):
        where = f"labels line {line_number} (id {record.get('id')!r})"
        _check_field_count(record, where)
        try:
            name = safe_name(record["image_name"].strip(), "image_name")
            sample_id = int(record.get("sample_id") or record["id"])
            row = RegistryRow(
                id=int(record["id"]),
                sample_id=sample_id,
                sample_name=record["sample_name"].strip(),
                quantity=int(float(record.get("quantity") or 0)),
                camera_type_1=(record.get("camera_type_1") or "").strip(),
                url=name,
                hashlib_md5="",
                image_name=name,
                split=(record.get("split") or "").strip() or split_for(sample_id, test_fraction),
                resolved_url=urljoin(folder_url, name),
            )
        except (TypeError, ValueError) as error:
            raise SourceError(f"{where}: malformed row: {error}") from None
        except SourceError as error:
            raise SourceError(f"{where}: {error}") from None
        yield row
