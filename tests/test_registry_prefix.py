"""Append-aware registry parsing (issue 25, item 2): a registry that only grew parses only its new rows,
and what comes out is what parsing the whole file gives, whatever happened in between."""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import pytest

from evalstack.core.layers import Layer
from evalstack.fetch.raw_layer import FetchConfig, fetch_raw_layer
from evalstack.sources.catalog import SourceConfig, iter_items
from evalstack.sources.registry import REGISTRY_COLUMNS, SourceError
from evalstack.sources.registry_prefix import ParseCounts
from evalstack.sources.transport import Transport, TransportConfig
from tests.conftest import store_in
from tests.test_fetch import make_registry


def row(i: int, name: str = "lactose") -> list:
    image = f"{100 + i}__{900 + i // 2}__{name}__50.png"
    return [100 + i, 900 + i // 2, name, 50, "Galaxy S9", f"images/{image}", hashlib.md5(str(i).encode()).hexdigest(),
            image]


def write(path: Path, rows: list[list], header: bool = True, end: str = "\r\n") -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=end)
    if header:
        writer.writerow(REGISTRY_COLUMNS)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue(), newline="")
    return path


def append(path: Path, rows: list[list]) -> None:
    with open(path, "a", newline="") as handle:
        csv.writer(handle).writerows(rows)


def listing(registry: Path, parses: Path | None) -> tuple[list, ParseCounts]:
    counts = ParseCounts()
    with Transport(TransportConfig()) as transport:
        rows = list(iter_items(SourceConfig(registries={"dev": str(registry)}), transport, parses, counts))
    return rows, counts


def test_a_grown_registry_parses_only_its_tail_and_lists_what_a_whole_parse_lists(tmp_path: Path):
    registry = write(tmp_path / "reg/metadata_dev.csv", [row(i) for i in range(50)])
    parses = tmp_path / "parses"
    first, counts = listing(registry, parses)
    assert (counts.parsed, counts.reused) == (50, 0)
    append(registry, [row(i) for i in range(50, 53)])
    grown, counts = listing(registry, parses)
    assert (counts.parsed, counts.reused) == (3, 50)
    assert grown == listing(registry, None)[0]  # the whole file, parsed from nothing
    again, counts = listing(registry, parses)  # unchanged: nothing parsed
    assert (counts.parsed, counts.reused) == (0, 53) and again == grown


def test_an_edited_row_inside_the_parsed_prefix_parses_everything(tmp_path: Path):
    registry = write(tmp_path / "reg/metadata_dev.csv", [row(i) for i in range(20)])
    parses = tmp_path / "parses"
    listing(registry, parses)
    rows = [row(i) for i in range(21)]
    rows[7][2] = "lactose2"  # one row in the middle relabelled, one appended: not an append
    write(registry, rows)
    edited, counts = listing(registry, parses)
    assert (counts.parsed, counts.reused) == (21, 0)
    assert edited == listing(registry, None)[0] and edited[7].sample_name == "lactose2"


def test_a_damaged_kept_parse_is_never_read(tmp_path: Path):
    registry = write(tmp_path / "reg/metadata_dev.csv", [row(i) for i in range(30)])
    parses = tmp_path / "parses"
    listing(registry, parses)
    (kept,) = parses.glob("*.sqlite")
    data = bytearray(kept.read_bytes())
    position = data.index(b"lactose")  # a row's value, changed in place: same size, a valid SQLite file
    data[position:position + 7] = b"sucrose"
    kept.write_bytes(bytes(data))
    append(registry, [row(30)])
    rows, counts = listing(registry, parses)
    assert (counts.parsed, counts.reused) == (31, 0)
    assert {r.sample_name for r in rows} == {"lactose"}


def test_a_file_that_ends_mid_row_is_not_kept_so_a_completed_row_is_parsed_whole(tmp_path: Path):
    registry = tmp_path / "reg/metadata_dev.csv"
    data = write(registry, [row(i) for i in range(5)]).read_bytes()
    registry.write_bytes(data[:-2])  # the last row lacks its line end: its last field may still grow
    listing(registry, tmp_path / "parses")
    registry.write_bytes(data[:-2] + b"x\r\n")  # image_name grew by one character
    rows, counts = listing(registry, tmp_path / "parses")
    assert counts.reused == 0 and rows[-1].image_name.endswith(".pngx")


def test_an_unclosed_quote_at_the_end_is_not_kept(tmp_path: Path):
    """Python's csv accepts a quote left open at the end of the file (the field runs to the end); rows
    appended later belong to that field when the whole file is parsed, so such a prefix is never kept."""
    registry = write(tmp_path / "reg/metadata_dev.csv", [row(i) for i in range(3)])
    last = row(3)
    with open(registry, "a", newline="") as handle:
        handle.write(",".join(map(str, last[:-1])) + f',"{last[-1]}\n')
    listing(registry, tmp_path / "parses")
    append(registry, [row(4)])  # the whole file now reads one field running over two lines: refused
    with pytest.raises(SourceError, match="line 5 .* unsafe image_name"):
        listing(registry, None)
    with pytest.raises(SourceError, match="line 5 .* unsafe image_name"):
        listing(registry, tmp_path / "parses")


def test_a_quote_inside_an_unquoted_field_does_not_hide_an_open_quote_at_the_end(tmp_path: Path):
    """A '"' inside an unquoted field (`5"phone`) is text to the csv module; counting quote characters took it
    for an opening quote, so a file that also ended inside an open quoted field looked closed. Its parse was
    kept, and a row appended later was listed as a row of its own, where the whole file reads it as part of
    the open field (found by a hunt: three items listed where a fetch from nothing lists two)."""
    registry = tmp_path / "reg/metadata_dev.csv"
    first, second = row(0), row(1)
    first[4] = '5"phone'  # written as it comes, unquoted (csv.writer would quote and double it)
    text = (write(registry, []).read_text() + ",".join(map(str, first)) + "\r\n"
            + ",".join(map(str, second[:-1])) + f',"{second[-1]}\r\n')
    registry.write_text(text, newline="")
    parses = tmp_path / "parses"
    rows, _ = listing(registry, parses)
    assert [r.camera_type_1 for r in rows] == ['5"phone', "Galaxy S9"]
    append(registry, [row(2)])  # the writer goes on: the whole file now reads one field over two lines
    with pytest.raises(SourceError, match="line 3 .* unsafe image_name"):
        listing(registry, None)
    with pytest.raises(SourceError, match="line 3 .* unsafe image_name"):
        listing(registry, parses)


def test_an_appended_bad_row_is_named_by_its_line_in_the_whole_file(tmp_path: Path):
    registry = write(tmp_path / "reg/metadata_dev.csv", [row(i) for i in range(10)])
    listing(registry, tmp_path / "parses")
    bad = row(10)
    bad[6] = "not-an-md5"
    append(registry, [bad])
    with pytest.raises(SourceError, match="line 12 "):
        listing(registry, tmp_path / "parses")
    with pytest.raises(SourceError, match="line 12 "):
        listing(registry, None)


def test_a_byte_order_mark_and_other_line_ends_list_the_same_rows(tmp_path: Path):
    plain = write(tmp_path / "a/metadata_dev.csv", [row(i) for i in range(4)], end="\n")
    marked = tmp_path / "b/metadata_dev.csv"
    marked.parent.mkdir()
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    parses = tmp_path / "parses"
    first, _ = listing(marked, parses)
    append(marked, [row(4)])
    second, counts = listing(marked, parses)
    assert (counts.parsed, counts.reused) == (1, 4)
    assert [r.id for r in second] == [100, 101, 102, 103, 104]
    assert [r.sample_name for r in second] == [r.sample_name for r in listing(plain, None)[0]] + ["lactose"]


def test_the_kept_parse_belongs_to_the_registry_folder(tmp_path: Path):
    """Rows resolve relative URLs against the registry's folder: the same bytes elsewhere are other rows."""
    parses = tmp_path / "parses"
    one = write(tmp_path / "one/metadata_dev.csv", [row(i) for i in range(5)])
    listing(one, parses)
    other = write(tmp_path / "other/metadata_dev.csv", [row(i) for i in range(6)])
    rows, counts = listing(other, parses)
    assert counts.reused == 0 and rows[0].resolved_url.startswith((tmp_path / "other").as_uri())


def test_a_raw_layer_built_as_the_registry_grows_equals_one_built_at_once(tmp_path: Path):
    registry = make_registry(tmp_path / "src", n=12)
    with open(registry, newline="") as handle:
        rows = sorted((list(record.values()) for record in csv.DictReader(handle)), key=lambda r: int(r[0]))
    config = FetchConfig(SourceConfig(registries={"dev": str(registry)}), shard_bytes=2 * 3698)
    store = store_in(tmp_path / "store")
    for n in (5, 9, 12):
        write(registry, rows[:n])  # rewritten whole, as an export would: the same prefix bytes
        result = fetch_raw_layer(config, tmp_path / "grown", store)
    assert result.report.activity["registry_rows_parsed"] == 3
    assert result.report.activity["registry_rows_reused"] == 9
    fresh = fetch_raw_layer(config, tmp_path / "fresh", store_in(tmp_path / "store2")).index
    grown = Layer.open(tmp_path / "grown", kind="raw")
    assert [s.sha256 for s in grown.shards] == [s.sha256 for s in fresh.shards]
    assert (tmp_path / "grown/index.json").read_bytes() == (tmp_path / "fresh/index.json").read_bytes()


def test_a_row_read_back_is_refused_once_its_file_became_a_link_out_of_the_roots(tmp_path: Path):
    """Where a row may point is checked on every listing, kept parse or not: the filesystem may change."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    registry = write(tmp_path / "reg/metadata_dev.csv", [row(i) for i in range(3)])
    images = tmp_path / "reg/images"
    images.mkdir()
    parses = tmp_path / "parses"
    listing(registry, parses)
    (images / row(1)[-1]).symlink_to(outside / "secret.png")  # one card's file now leads out
    with pytest.raises(SourceError, match=r"item id 101 .* is outside the registry's folder"):
        listing(registry, parses)
    (images / row(1)[-1]).unlink()
    (tmp_path / "reg/images").rename(tmp_path / "reg/real")
    (tmp_path / "reg/images").symlink_to(outside)  # now the whole folder leads out
    with pytest.raises(SourceError, match=r"item id 100 .* is outside the registry's folder"):
        listing(registry, parses)


def test_dot_dot_in_a_local_file_url_is_resolved_before_the_roots_are_checked(tmp_path: Path):
    inside = row(0)
    inside[5] = (tmp_path / "reg/images/..").as_uri() + "/../outside.png"  # a file URL that climbs out
    registry = write(tmp_path / "reg/metadata_dev.csv", [inside])
    (tmp_path / "reg/images").mkdir()
    with pytest.raises(SourceError, match="is outside the registry's folder"):
        listing(registry, tmp_path / "parses")


def test_a_parse_left_by_a_killed_fetch_is_removed_by_the_next(tmp_path: Path):
    import os
    import time

    from evalstack.core.atomic import STALE_AFTER_S

    store = store_in(tmp_path / "store")
    leftover = store.directory / "fetch/registries/abc.1234.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a parse")
    old = time.time() - STALE_AFTER_S - 10
    os.utime(leftover, (old, old))
    registry = make_registry(tmp_path / "src", n=1)
    fetch_raw_layer(FetchConfig(SourceConfig(registries={"dev": str(registry)})), tmp_path / "raw", store)
    assert not leftover.exists()
    assert list(leftover.parent.glob("*.sqlite"))  # this fetch's parse is kept
