import io

import pytest
from PIL import Image

from evalstack.sources.images import check_image
from evalstack.sources.registry import (
    REGISTRY_COLUMNS,
    SourceError,
    check_unique_ids,
    parse_registry,
    safe_name,
    to_url,
)
from tests.conftest import png_bytes

HEADER = ",".join(REGISTRY_COLUMNS)
ROW = "15588,53796,hydroxychloroquine,100,Google Pixel 3a,images/a.png,ea1e1c9756b054e80aa3942596d6b25d,15588__53796__hydroxychloroquine__100.png"


def test_parse_registry_resolves_relative_urls_but_stores_them_as_given():
    rows = parse_registry(f"{HEADER}\n{ROW}\n", "test", "file:///data/source/metadata_test.csv")
    assert rows[0].url == "images/a.png"
    assert rows[0].resolved_url == "file:///data/source/images/a.png"
    assert (rows[0].id, rows[0].quantity, rows[0].split) == (15588, 100, "test")


def test_missing_column_is_named():
    with pytest.raises(SourceError, match=r"lacks columns \['hashlib_md5'\]"):
        parse_registry(HEADER.replace(",hashlib_md5", "") + "\n", "dev", "file:///r.csv")


def test_malformed_row_names_line_and_id():
    bad = ROW.replace("53796", "not-a-number")
    with pytest.raises(SourceError, match=r"line 2 \(id '15588'\): malformed row"):
        parse_registry(f"{HEADER}\n{bad}\n", "dev", "file:///r.csv")


def test_bad_md5_is_refused():
    with pytest.raises(SourceError, match="is not an md5"):
        parse_registry(f"{HEADER}\n{ROW.replace('ea1e1c', 'zz1e1c')}\n", "dev", "file:///r.csv")


@pytest.mark.parametrize("name", ["../etc/passwd", "/abs.png", "a/b.png", "..png", ""])
def test_unsafe_names_are_refused(name):
    with pytest.raises(SourceError, match="unsafe"):
        safe_name(name, "image_name")


def test_duplicate_ids_are_refused():
    rows = parse_registry(f"{HEADER}\n{ROW}\n{ROW}\n", "dev", "file:///r.csv")
    with pytest.raises(SourceError, match="duplicate id 15588"):
        check_unique_ids(rows)


def test_check_image_caps_pixels_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")
    with pytest.raises(SourceError, match="exceeds the cap"):
        check_image(buffer.getvalue(), max_pixels=4096 * 4096, what="item id 1")


def test_check_image_refuses_garbage_and_truncation():
    with pytest.raises(SourceError, match="item id 7: not a decodable image"):
        check_image(b"\x89PNG garbage", 10**8, "item id 7")
    data = png_bytes(64, 64)
    with pytest.raises(SourceError, match="item id 8"):
        check_image(data[: len(data) // 2], 10**8, "item id 8")


def test_to_url_turns_paths_into_file_urls(tmp_path):
    assert to_url(tmp_path / "r.csv").startswith("file:///")
    assert to_url("http://127.0.0.1:9/r.csv") == "http://127.0.0.1:9/r.csv"
