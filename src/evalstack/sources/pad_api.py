"""The PAD API v2 as a source: card records, paginated, → `RegistryRow`s.

`GET {api}/projects/{id}/cards?skip=&limit=` (one project) or `GET {api}/cards?skip=&limit=`
(every card) return pages of card records with `id, sample_name, sample_id, quantity,
processed_file_location, camera_type_1, project`. The image is at the server root +
`processed_file_location`. The API states no checksum, so these rows carry an empty
`hashlib_md5`: nothing is checked beyond the image decoding, and the raw layer says so.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlencode, urlparse

from evalstack.sources.registry import RegistryRow, SourceError, safe_name, safe_relative_url, split_for
from evalstack.sources.transport import Transport, join

CARD_FIELDS = ("id", "sample_name", "sample_id", "quantity", "processed_file_location", "camera_type_1")
MAX_PAGES = 100_000  # a server that never stops paging is a bug, not a dataset


@dataclass(frozen=True)
class PadApiSource:
    url: str  # the API root, e.g. https://pad.crc.nd.edu/api/v2
    project: int | None = None  # None: every card the API lists
    image_root: str = ""  # where processed_file_location is rooted; default: the API's scheme://host/
    page_size: int = 500
    test_fraction: float = 0.2  # the API has no split: samples are assigned by a hash of sample_id

    @property
    def root(self) -> str:
        if self.image_root:
            return self.image_root
        parsed = urlparse(self.url)
        return f"{parsed.scheme}://{parsed.netloc}/"

    def page_url(self, skip: int) -> str:
        path = f"projects/{self.project}/cards" if self.project is not None else "cards"
        return join(self.url, path) + "?" + urlencode({"skip": skip, "limit": self.page_size})


def list_cards(source: PadApiSource, transport: Transport) -> list[RegistryRow]:
    """Every card, page by page, validated and mapped to rows."""
    return list(iter_cards(source, transport))


def iter_cards(source: PadApiSource, transport: Transport) -> Iterator[RegistryRow]:
    """`list_cards` one page at a time: memory holds one page, not the whole listing."""
    if source.page_size < 1:
        raise SourceError(f"pad_api page_size must be >= 1, got {source.page_size}")
    for card in _pages(source, transport):
        yield card_to_row(card, source)


def _pages(source: PadApiSource, transport: Transport) -> Iterator[dict[str, Any]]:
    skip = 0
    for _ in range(MAX_PAGES):
        url = source.page_url(skip)
        page = _cards_of(transport.get(url, f"PAD API page {url}"), url)
        yield from page
        if len(page) < source.page_size:
            return
        skip += len(page)
    raise SourceError(f"{source.url}: more than {MAX_PAGES} pages; is the API ignoring skip/limit?")


def _cards_of(body: bytes, url: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(body)
    except ValueError as error:
        raise SourceError(f"{url}: not JSON ({error})") from None
    if isinstance(data, dict):  # some deployments wrap the list
        data = next((data[k] for k in ("cards", "items", "data", "results") if isinstance(data.get(k), list)), None)
    if not isinstance(data, list) or not all(isinstance(card, dict) for card in data):
        raise SourceError(f"{url}: expected a list of card records")
    return data


def card_to_row(card: dict[str, Any], source: PadApiSource) -> RegistryRow:
    where = f"PAD API card {card.get('id')!r}"
    missing = [name for name in CARD_FIELDS if card.get(name) in (None, "") and name != "camera_type_1"]
    if missing:
        raise SourceError(f"{where}: lacks {missing}")
    try:
        card_id, sample_id = int(card["id"]), int(card["sample_id"])
        quantity = int(float(card["quantity"]))
    except (TypeError, ValueError) as error:
        raise SourceError(f"{where}: malformed card: {error}") from None
    location = str(card["processed_file_location"]).strip()
    try:
        if urlparse(location).scheme or location.startswith("//"):
            raise SourceError(f"unsafe processed_file_location {location!r}: must be a path on the server")
        safe_relative_url(location.lstrip("/"), "processed_file_location")
    except SourceError as error:
        raise SourceError(f"{where}: {error}") from None
    sample_name = str(card["sample_name"]).strip()
    # Server names never touch the filesystem as they are; this one is built from sanitised parts.
    image_name = safe_name(f"{card_id}__{sample_id}__{_slug(sample_name)}__{quantity}.png", "image_name")
    return RegistryRow(
        id=card_id, sample_id=sample_id, sample_name=sample_name, quantity=quantity,
        camera_type_1=str(card.get("camera_type_1") or "").strip(),
        url=location, hashlib_md5="", image_name=image_name,
        split=split_for(sample_id, source.test_fraction),
        resolved_url=join(source.root, location),
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:80] or "unnamed"
