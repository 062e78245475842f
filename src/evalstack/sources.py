"""Dataset sources: where a dataset's registry and images come from.

The registry CSV layout is PAD's (`pad_dataset_registry`): one row per card photo,
`url` pointing at the image and `hashlib_md5` stating its checksum. A relative
`url` is resolved against the registry's own location, so the embedded dataset
and a copy served over HTTP use the same rows.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

from PIL import Image

REGISTRY_COLUMNS = ("id", "sample_id", "sample_name", "quantity", "camera_type_1", "url", "hashlib_md5", "image_name")
DEFAULT_MAX_PIXELS = 4096 * 4096
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,199}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")


class SourceError(RuntimeError):
    """A source or one of its items cannot be used; the message names the item."""


@dataclass(frozen=True)
class RegistryRow:
    id: int
    sample_id: int
    sample_name: str
    quantity: int
    camera_type_1: str
    url: str
    hashlib_md5: str
    image_name: str
    split: str
    resolved_url: str = ""  # where to download from; not stored, it can be machine-specific


def to_url(location: str | Path) -> str:
    """A registry location as a URL: plain paths become absolute file:// URLs."""
    text = str(location)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        return text
    return Path(text).resolve().as_uri()


def check_scheme(url: str, allowed: tuple[str, ...]) -> None:
    scheme = urlparse(url).scheme
    if scheme not in allowed:
        raise SourceError(f"URL scheme {scheme!r} is not allowed (allowed: {', '.join(allowed)}): {url}")


def read_local(url: str) -> bytes:
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise SourceError(f"not a file:// URL: {url}")
    path = Path(unquote(parsed.path))
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"file not found: {path}") from None


def safe_name(name: str, what: str) -> str:
    """Reject names that could escape a directory or confuse a shell (they come from a server)."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise SourceError(f"unsafe {what} {name!r}: only letters, digits, '.', '_', '-' and spaces are allowed")
    return name


def parse_registry(text: str, split: str, registry_url: str) -> list[RegistryRow]:
    """Rows of a registry CSV, validated; relative image URLs resolved against `registry_url`."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REGISTRY_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise SourceError(f"{registry_url}: registry lacks columns {missing}")
    rows = []
    for line_number, record in enumerate(reader, start=2):
        rows.append(_parse_row(record, split, registry_url, line_number))
    return rows


def _parse_row(record: dict[str, str], split: str, registry_url: str, line_number: int) -> RegistryRow:
    where = f"{registry_url} line {line_number} (id {record.get('id')!r})"
    try:
        row = RegistryRow(
            id=int(record["id"]),
            sample_id=int(record["sample_id"]),
            sample_name=record["sample_name"].strip(),
            quantity=int(float(record["quantity"])),
            camera_type_1=(record["camera_type_1"] or "").strip(),
            url=record["url"].strip(),
            hashlib_md5=record["hashlib_md5"].strip().lower(),
            image_name=safe_name(record["image_name"].strip(), "image_name"),
            split=split,
            resolved_url=urljoin(registry_url, record["url"].strip()),
        )
    except (TypeError, ValueError, AttributeError) as error:
        raise SourceError(f"{where}: malformed row: {error}") from None
    if not _MD5.match(row.hashlib_md5):
        raise SourceError(f"{where}: hashlib_md5 {row.hashlib_md5!r} is not an md5 hex digest")
    return row


def check_unique_ids(rows: list[RegistryRow]) -> None:
    seen: set[int] = set()
    for row in rows:
        if row.id in seen:
            raise SourceError(f"duplicate id {row.id} in the registry (image {row.image_name})")
        seen.add(row.id)


def check_image(data: bytes, max_pixels: int, what: str) -> tuple[int, int]:
    """Validate encoded image bytes without trusting them; returns (width, height).

    The pixel cap is checked from the header before any pixel is decoded, which is
    what stops a decompression bomb.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise SourceError(f"{what}: {width}×{height} pixels exceeds the cap of {max_pixels} (decompression bomb?)")
            image.verify()
    except SourceError:
        raise
    except Exception as error:  # Pillow raises many types for bad data
        raise SourceError(f"{what}: not a decodable image ({type(error).__name__}: {error})") from None
    return width, height


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> Image.Image:
    check_image(data, max_pixels, what)
    image = Image.open(io.BytesIO(data))
    try:
        image.load()
    except Exception as error:
        raise SourceError(f"{what}: truncated or damaged image data ({error})") from None
    return image
