import csv
import hashlib
from pathlib import Path

import pytest

from evalstack.fetch import FetchConfig, fetch_raw_layer, read_blobs
from evalstack.sources import REGISTRY_COLUMNS, SourceError
from evalstack.store import Layer
from tests.conftest import png_bytes


def make_registry(root: Path, n: int = 5, corrupt_id: int | None = None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"{100 + i}__{900 + i // 2}__lactose__50.png"
        data = png_bytes(40, 30, seed=i)
        (root / "images" / name).write_bytes(data)
        md5 = hashlib.md5(data).hexdigest()
        if corrupt_id == 100 + i:
            md5 = "0" * 32
        rows.append([100 + i, 900 + i // 2, "lactose", 50, "Galaxy S9", f"images/{name}", md5, name])
    registry = root / "metadata_dev.csv"
    with open(registry, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REGISTRY_COLUMNS)
        writer.writerows(reversed(rows))  # arrival order is by id, not by row order
    return registry


def test_fetch_builds_sharded_raw_layer_in_id_order(tmp_path: Path):
    registry = make_registry(tmp_path / "src")
    index = fetch_raw_layer(FetchConfig({"dev": str(registry)}, shard_size=2), tmp_path / "raw")
    assert [s.n_items for s in index.shards] == [2, 2, 1]
    layer = Layer.open(tmp_path / "raw", kind="raw")
    assert list(layer.column("id")) == [100, 101, 102, 103, 104]
    assert set(layer.column("split")) == {"dev"}
    with layer.open_shard(layer.shards[1]) as handle:
        blobs = read_blobs(handle, slice(0, 2))
    assert blobs[0] == (tmp_path / "src/images/102__901__lactose__50.png").read_bytes()
    # The item key is the sha256 of the bytes, not anything the source says.
    assert layer.item_keys()[2] == hashlib.sha256(blobs[0]).hexdigest()


def test_fetch_twice_gives_byte_identical_shards(tmp_path: Path):
    registry = make_registry(tmp_path / "src")
    first = fetch_raw_layer(FetchConfig({"dev": str(registry)}, shard_size=2), tmp_path / "a")
    second = fetch_raw_layer(FetchConfig({"dev": str(registry)}, shard_size=2), tmp_path / "b")
    assert [s.sha256 for s in first.shards] == [s.sha256 for s in second.shards]
    assert (tmp_path / "a/index.json").read_bytes() == (tmp_path / "b/index.json").read_bytes()


def test_md5_mismatch_names_the_item_and_leaves_no_layer(tmp_path: Path):
    registry = make_registry(tmp_path / "src", corrupt_id=103)
    with pytest.raises(SourceError, match=r"item id 103 \(103__901__lactose__50.png\): md5"):
        fetch_raw_layer(FetchConfig({"dev": str(registry)}, shard_size=2), tmp_path / "raw")
    assert not (tmp_path / "raw/index.json").exists()


def test_missing_image_is_named(tmp_path: Path):
    registry = make_registry(tmp_path / "src")
    (tmp_path / "src/images/101__900__lactose__50.png").unlink()
    with pytest.raises(SourceError, match="file not found: .*101__900__lactose__50.png"):
        fetch_raw_layer(FetchConfig({"dev": str(registry)}), tmp_path / "raw")


def test_disallowed_scheme_is_refused(tmp_path: Path):
    with pytest.raises(SourceError, match="scheme 'ftp' is not allowed"):
        fetch_raw_layer(FetchConfig({"dev": "ftp://127.0.0.1/r.csv"}), tmp_path / "raw")
