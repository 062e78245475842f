"""What a source offers: the `fetch.source` param → the validated list of items, in id order.

Kinds: `registry` (PAD registry CSVs, one per split, local or http/https), `pad_api`
(PAD API v2 cards, paginated) and `folder` (a local folder of images + a labels CSV).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import unquote, urlparse

from evalstack.sources.pad_api import PadApiSource, iter_cards
from evalstack.sources.registry import (
    RegistryRow,
    SourceError,
    check_unique_ids,
    iter_labels,
    iter_registry,
    local_path,
    md5_capped,
    to_url,
)
from evalstack.sources.registry_prefix import ParseCounts, rows_appended
from evalstack.sources.transport import Transport

SOURCE_KINDS = ("registry", "pad_api", "folder")
REMOTE_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class SourceConfig:
    kind: str = "registry"
    registries: Mapping[str, str] = field(default_factory=dict)  # registry: split → CSV path or URL
    url: str = ""  # pad_api: the API root
    project: int | None = None  # pad_api: one project's cards, or every card
    image_root: str = ""  # pad_api: server root for processed_file_location (default: the API's host)
    page_size: int = 500  # pad_api
    folder: str = ""  # folder: directory of images
    labels: str = ""  # folder: labels CSV (default: <folder>/labels.csv)
    test_fraction: float = 0.2  # pad_api/folder without a split column: share of samples in test
    # registry: folders a local registry's file:// rows may name besides the registry's own folder
    roots: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise SourceError(f"fetch.source.kind {self.kind!r} unknown; choose one of {', '.join(SOURCE_KINDS)}")
        needed = {"registry": self.registries, "pad_api": self.url, "folder": self.folder}[self.kind]
        if not needed:
            field_name = {"registry": "registries", "pad_api": "url", "folder": "folder"}[self.kind]
            raise SourceError(f"fetch.source of kind {self.kind} needs {field_name}")
        if isinstance(self.roots, str) or not all(isinstance(root, str) for root in self.roots):
            raise SourceError(f"fetch.source.roots must be a list of folders, got {self.roots!r}")
        object.__setattr__(self, "roots", tuple(self.roots))

    @classmethod
    def from_params(cls, fetch: Mapping[str, Any]) -> "SourceConfig":
        """`fetch.source: {kind: …}`. The older `fetch.registries: {split: csv}` is refused, naming where it goes:
        the fetch stage tracks `fetch.source` in dvc.yaml, not `fetch.registries`, so an edit there (a split
        pointed at another CSV) would not refetch, and the old raw layer would be scored (found by an audit)."""
        if fetch.get("registries") is not None:
            raise SourceError(f"fetch.registries is the older spelling of a registry source; move it to "
                              f"fetch.source: {{kind: registry, registries: {dict(fetch['registries'])!r}}}: dvc.yaml "
                              "tracks fetch.source for the fetch stage, so an edit of fetch.registries would not "
                              "refetch, and a stale raw layer would be scored")
        source = dict(fetch.get("source") or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(source) - known)
        if unknown:
            raise SourceError(f"fetch.source has unknown keys {unknown}; known: {sorted(known)}")
        return cls(**source)

    def local_files(self) -> list[tuple[str, Path]]:
        """What a fetch reads from this machine's disk, which the fetch stage's deps must cover: a folder
        source's folder (images and labels, no digest to check them by) and labels file, a local registry's CSV
        files (the listing; each row carries its image's md5). A server is no file: `dvc repro -f fetch`."""
        if self.kind == "folder":
            found = [("the folder source", local_path(self.folder)), ("the labels file", local_path(self.labels))]
        elif self.kind == "registry":
            found = [(f"the {split} registry", local_path(location))
                     for split, location in sorted(self.registries.items())]
        else:
            found = []
        return [(what, path) for what, path in found if path is not None and str(path) not in ("", ".")]

    def describe(self) -> dict[str, Any]:
        """The settings that matter for this kind (for the report and the layer index)."""
        names = {"registry": ("registries",), "pad_api": ("url", "project", "image_root", "page_size", "test_fraction"),
                 "folder": ("folder", "labels", "test_fraction")}[self.kind]
        return {"kind": self.kind, **{name: _plain(getattr(self, name)) for name in names}}


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


def list_items(config: SourceConfig, transport: Transport) -> list[RegistryRow]:
    """Every item the source lists, validated, unique by id, in id order (PAD ids grow as cards
    are uploaded, so new cards land in new shards)."""
    rows = list(iter_items(config, transport))
    check_unique_ids(rows, registry_origins(config))
    return sorted(rows, key=lambda row: row.id)


def registry_origins(config: SourceConfig) -> dict[str, str] | None:
    """split → registry URL, for errors that name where a row came from (None for other kinds)."""
    return {split: to_url(location) for split, location in config.registries.items()} if config.kind == "registry" else None


def iter_items(config: SourceConfig, transport: Transport, parses: Path | None = None,
               counts: ParseCounts | None = None) -> Iterator[RegistryRow]:
    """Every item the source lists, validated, in the source's order and not yet checked for unique
    ids: read as it comes (a registry file line by line, the API page by page), so a caller that
    keeps rows elsewhere (fetch's listing, fetch/listing.py) never holds them all in memory.
    `parses`: where local registries' last parses are kept, to parse only what was appended since
    (sources/registry_prefix.py); `counts` is told what was parsed and what read back."""
    if config.kind == "registry":
        yield from _registry_rows(config, transport, parses, counts if counts is not None else ParseCounts())
    elif config.kind == "pad_api":
        yield from iter_cards(PadApiSource(config.url, config.project, config.image_root, config.page_size,
                                           config.test_fraction), transport)
    else:
        yield from _folder_rows(config, transport)


def _registry_rows(config: SourceConfig, transport: Transport, parses: Path | None,
                   counts: ParseCounts) -> Iterator[RegistryRow]:
    for split in sorted(config.registries):
        url = to_url(config.registries[split])
        remote = urlparse(url).scheme in REMOTE_SCHEMES
        roots = None if remote else local_roots(url, config.roots)

        def check(row: RegistryRow, url: str = url, remote: bool = remote, roots: LocalRoots | None = roots) -> None:
            check_row_location(row, url, remote, roots, transport.config.schemes)

        with transport.open_text(url, f"registry {split} ({url})") as lines:
            if parses is not None and urlparse(url).scheme == "file":
                context = [*map(str, roots.paths if roots else ()), *transport.config.schemes]
                yield from rows_appended(lines.buffer, url, split, context, parses, counts, check)
                continue
            for row in iter_registry(lines, split, url):
                check(row)
                counts.parsed += 1
                yield row


class LocalRoots:
    """The folders a local registry's rows may read, and the test of a path against them.

    Resolving a path's symlinks costs ~25 µs (a stat per component), on every row of every listing:
    5 s at 200,000 rows. Rows share a few folders, so each folder is resolved once per listing and a
    row costs one lstat of its own name (a symlinked file is resolved whole, as is a name like '..')."""

    def __init__(self, paths: tuple[Path, ...]):
        self.paths = paths
        self._folders: dict[str, bool] = {}

    def contains(self, path: str) -> bool:
        folder, name = os.path.split(path)
        if name in ("", ".", "..") or os.path.islink(path):
            return self._inside(Path(path).resolve())
        inside = self._folders.get(folder)
        if inside is None:
            inside = self._folders[folder] = self._inside(Path(folder).resolve())
        return inside

    def _inside(self, resolved: Path) -> bool:
        return any(resolved.is_relative_to(root) for root in self.paths)


def local_roots(registry_url: str, extra: tuple[str, ...]) -> LocalRoots:
    """The folders a local registry's rows may read: its own folder and `fetch.source.roots`, symlinks resolved."""
    own = Path(unquote(urlparse(registry_url).path)).resolve().parent
    return LocalRoots((own, *(Path(root).resolve() for root in extra)))


def check_row_location(row: RegistryRow, registry_url: str, remote: bool, roots: LocalRoots | None,
                       schemes: tuple[str, ...]) -> None:
    """Where a registry row may point, decided at listing, before the row is matched against the last raw
    layer: an item whose id and md5 are already there is never downloaded again, so a check made only when
    bytes are read would let a refused URL through on every later run."""
    url = row.resolved_url
    if url.startswith("file:///") and not any(mark in url for mark in "?#;"):  # urlparse's answer, 3 µs sooner
        scheme, path = "file", url[7:]
    else:
        parts = urlparse(url)
        scheme, path = parts.scheme, parts.path
    if scheme not in schemes:
        raise SourceError(f"{row.what}: URL scheme {scheme!r} refused (fetch.schemes allows "
                          f"{', '.join(schemes)}): {row.resolved_url}")
    if remote and scheme not in REMOTE_SCHEMES:  # a remote registry never names files on this machine
        raise SourceError(f"{row.what}: URL scheme {scheme!r} refused: a remote registry ({registry_url}) may only "
                          f"point at http(s) images, not {row.resolved_url}")
    if scheme == "file":
        assert roots is not None, "a local registry's rows are checked against its roots"
        if not roots.contains(unquote(path)):
            raise SourceError(
                f"{row.what}: {row.resolved_url} is outside the registry's folder ({roots.paths[0]}) and "
                f"fetch.source.roots ({[str(root) for root in roots.paths[1:]]}); a local registry reads only there. "
                "List the images' folder under fetch.source.roots to allow it")


def _folder_rows(config: SourceConfig, transport: Transport) -> Iterator[RegistryRow]:
    folder_url = to_url(config.folder).rstrip("/") + "/"
    labels_url = to_url(config.labels) if config.labels else folder_url + "labels.csv"
    cap = transport.config.max_bytes
    with transport.open_text(labels_url, f"labels CSV ({labels_url})") as lines:
        for row in iter_labels(lines, folder_url, config.test_fraction):
            # Local files are cheap to hash, so folder items get an md5 and re-fetches notice edited images.
            yield dataclasses.replace(row, hashlib_md5=_file_md5(row.resolved_url, cap))


def _file_md5(url: str, max_bytes: int) -> str:
    return md5_capped(Path(unquote(urlparse(url).path)), max_bytes)
