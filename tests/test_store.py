import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from evalstack.core.keys import Key
from evalstack.core.layers import (
    INDEX_NAME,
    CacheStaleError,
    Layer,
    LayerCorruptError,
    LayerWriter,
    StoreError,
    read_column,
    shard_name,
    write_shard,
)


def _columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "item_key": np.asarray([hashlib.sha256(bytes([i])).hexdigest() for i in range(n)], dtype="S64"),
        "x": rng.integers(0, 255, size=(n, 8, 8, 3), dtype=np.uint8),
        "name": np.asarray([f"card {i}" for i in range(n)], dtype=object),
    }


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("compression", ["none", "lzf", "lz4", "gzip"])
def test_same_data_gives_byte_identical_shards(tmp_path: Path, compression: str):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_shard(a, _columns(5), {"k": "v", "d": {"x": 1}}, compression)
    write_shard(b, _columns(5), {"d": {"x": 1}, "k": "v"}, compression)
    assert _md5(a) == _md5(b)


def test_shard_round_trip_with_strings_tensors_and_flat_arrays(tmp_path: Path):
    path = tmp_path / "s.h5"
    columns = _columns(4)
    blob = np.arange(10, dtype=np.uint8)
    write_shard(path, columns, {"meta": {"a": [1, 2]}}, "lz4", flat={"blob": blob})
    import h5py

    with h5py.File(path) as handle:
        assert np.array_equal(read_column(handle, "x"), columns["x"])
        assert list(read_column(handle, "name")) == [f"card {i}" for i in range(4)]
        assert np.array_equal(handle["blob"][()], blob)
        assert handle["x"].chunks == (1, 8, 8, 3)


def test_uncompressed_tensors_are_contiguous_and_read_back_row_ranges(tmp_path: Path):
    import h5py

    path = tmp_path / "s.h5"
    columns = _columns(6)
    write_shard(path, columns, {}, "none")
    with h5py.File(path) as handle:
        assert handle["x"].chunks is None and handle["x"].id.get_offset() is not None
        assert np.array_equal(read_column(handle, "x"), columns["x"])
        assert np.array_equal(read_column(handle, "x", slice(2, 5)), columns["x"][2:5])
        assert np.array_equal(read_column(handle, "x", slice(4, 99)), columns["x"][4:])
        assert read_column(handle, "x", slice(6, 6)).shape == (0, 8, 8, 3)
        assert np.array_equal(read_column(handle, "x", np.array([0, 3])), columns["x"][[0, 3]])


def test_shard_rejects_columns_of_different_length(tmp_path: Path):
    with pytest.raises(StoreError, match="differ in length"):
        write_shard(tmp_path / "s.h5", {"a": np.zeros(2), "b": np.zeros(3)}, {})
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_unknown_compression_is_a_clear_error(tmp_path: Path):
    with pytest.raises(StoreError, match="unknown compression 'zstd'"):
        LayerWriter(tmp_path / "layer", "raw", Key("raw"), compression="zstd")


def test_layer_is_not_readable_until_finished(tmp_path: Path):
    writer = LayerWriter(tmp_path / "layer", "preprocessed", Key("pipeline", {"size": 8}))
    writer.add_shard(shard_name(0), _columns(3))
    with pytest.raises(StoreError, match="not a finished layer"):
        Layer.open(tmp_path / "layer")
    writer.finish()
    layer = Layer.open(tmp_path / "layer", kind="preprocessed")
    assert len(layer) == 3


def test_layer_streams_batches_across_shards(tmp_path: Path):
    writer = LayerWriter(tmp_path / "layer", "preprocessed", Key("pipeline"))
    writer.add_shard(shard_name(0), _columns(5, seed=0))
    writer.add_shard(shard_name(1), _columns(3, seed=1))
    writer.finish()
    layer = Layer.open(tmp_path / "layer")
    sizes = [len(batch["x"]) for batch in layer.iter_batches(["x"], batch_size=2)]
    assert sizes == [2, 2, 1, 2, 1]
    assert len(layer.item_keys()) == 8


def test_finish_removes_shards_not_in_the_index(tmp_path: Path):
    directory = tmp_path / "layer"
    directory.mkdir()
    (directory / "00007.h5").write_bytes(b"old")
    (directory / ".00000.h5.123.tmp").write_bytes(b"crashed")
    writer = LayerWriter(directory, "raw", Key("raw"))
    writer.add_shard(shard_name(0), _columns(1))
    writer.finish()
    assert sorted(p.name for p in directory.iterdir()) == ["00000.h5", INDEX_NAME]


def test_check_shard_refuses_a_modified_shard(tmp_path: Path):
    writer = LayerWriter(tmp_path / "layer", "raw", Key("raw"))
    writer.add_shard(shard_name(0), _columns(2))
    writer.finish()
    layer = Layer.open(tmp_path / "layer")
    shard = tmp_path / "layer" / "00000.h5"
    assert layer.check_shard(layer.shards[0]) == shard
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(LayerCorruptError, match=r"00000.h5 does not match the sha256 recorded in .*index.json"):
        layer.check_shard(layer.shards[0])


def test_add_existing_refuses_a_shard_of_another_layer(tmp_path: Path):
    other = LayerWriter(tmp_path / "other", "preprocessed", Key("pipeline", {"size": 8}))
    other.add_shard(shard_name(0), _columns(2), upstream="a" * 64)
    writer = LayerWriter(tmp_path / "layer", "preprocessed", Key("pipeline", {"size": 9}))
    other.path(shard_name(0)).rename(writer.path(shard_name(0)))  # placed as the shard store would place it
    with pytest.raises(StoreError, match="layer_key"):
        writer.add_existing(shard_name(0), "0" * 64, upstream="a" * 64)


def test_index_records_the_column_schema(tmp_path: Path):
    writer = LayerWriter(tmp_path / "layer", "preprocessed", Key("pipeline"))
    writer.add_shard(shard_name(0), _columns(2), checksum_of=("x",))
    index = writer.finish()
    assert index.schema["x"] == ["|u1", [8, 8, 3]]
    assert set(index.schema) == {"item_key", "x", "name", "checksum"}
    assert Layer.open(tmp_path / "layer").index.schema == index.schema


def test_expect_key_explains_what_changed(tmp_path: Path):
    writer = LayerWriter(tmp_path / "layer", "predictions", Key("predictions", {"model": {"weights_sha256": "a" * 64}}))
    writer.finish()
    layer = Layer.open(tmp_path / "layer")
    with pytest.raises(CacheStaleError) as error:
        layer.expect_key(Key("predictions", {"model": {"weights_sha256": "b" * 64}}), "dvc repro infer@m")
    assert "model.weights_sha256: aaaaaaaaaaaa → bbbbbbbbbbbb" in str(error.value)
    assert "dvc repro infer@m" in str(error.value)


def test_other_schema_version_is_stale(tmp_path: Path):
    writer = LayerWriter(tmp_path / "layer", "raw", Key("raw"))
    writer.finish()
    index = tmp_path / "layer" / INDEX_NAME
    data = json.loads(index.read_text())
    data["schema_version"] = 0
    index.write_text(json.dumps(data))
    with pytest.raises(CacheStaleError, match="schema version 0"):
        Layer.open(tmp_path / "layer")


def test_wrong_kind_is_refused(tmp_path: Path):
    LayerWriter(tmp_path / "layer", "raw", Key("raw")).finish()
    with pytest.raises(StoreError, match="is a raw layer, expected a predictions layer"):
        Layer.open(tmp_path / "layer", kind="predictions")


def test_the_old_layer_stays_valid_until_the_new_one_is_complete(tmp_path: Path):
    directory = tmp_path / "layer"
    old = LayerWriter(directory, "raw", Key("raw", {"v": 1}))
    old.add_shard(shard_name(0), _columns(2))
    old.finish()
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    writer = LayerWriter(directory, "raw", Key("raw", {"v": 2}))
    writer.add_shard(shard_name(0), _columns(3))
    writer.add_shard(shard_name(1), _columns(1))
    # A reader in the middle of the build, or after a crash here, sees the old layer, whole and checked.
    layer = Layer.open(directory)
    assert layer.key.parts == {"v": 1} and len(layer) == 2
    layer.check_shard(layer.shards[0])
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    writer.finish()
    assert len(Layer.open(directory)) == 4 and not list(tmp_path.glob(".layer.*"))
    crashed = LayerWriter(directory, "raw", Key("raw", {"v": 3}))
    crashed.add_shard(shard_name(0), _columns(5))
    del crashed  # killed before finish: the next writer clears its staging directory
    LayerWriter(directory, "raw", Key("raw", {"v": 4}))
    assert len(list(tmp_path.glob(".layer.staging-*"))) == 1 and len(Layer.open(directory)) == 4


def test_the_index_locates_plain_arrays_and_readers_skip_hdf5_for_them(tmp_path: Path, monkeypatch):
    import h5py

    from evalstack.core.layers import ShardColumns

    writer = LayerWriter(tmp_path / "layer", "preprocessed", Key("t", {"a": 1}), "none")
    columns = _columns(6)
    writer.add_shard(shard_name(0), columns)
    writer.finish()
    layer = Layer.open(tmp_path / "layer")
    shard = layer.shards[0]
    recorded = json.loads((tmp_path / "layer" / INDEX_NAME).read_text())["shards"][0]["arrays"]
    assert set(recorded) == {"item_key", "x"} and recorded["x"][1:] == ["|u1", [6, 8, 8, 3]]  # strings stay with h5py
    with h5py.File(layer.path(shard)) as handle:
        expected = {name: read_column(handle, name) for name in ("item_key", "x", "name")}

    opened = []
    real_file = h5py.File
    monkeypatch.setattr(h5py, "File", lambda *args, **kwargs: opened.append(args) or real_file(*args, **kwargs))
    with ShardColumns(layer.path(shard), shard) as reader:
        assert np.array_equal(reader.read("x", slice(2, 5)), expected["x"][2:5])
        assert list(reader.read("item_key")) == list(expected["item_key"])  # decoded as read_column decodes
        assert opened == []  # numbers and fixed-width keys came straight from the file
        assert list(reader.read("name")) == list(expected["name"])
        assert len(opened) == 1  # a variable-length string column opens the file through h5py, once
    assert np.array_equal(layer.column("x"), expected["x"])


def test_a_shard_shorter_than_its_index_says_is_refused_by_the_direct_reader(tmp_path: Path):
    from evalstack.core.layers import ShardColumns

    writer = LayerWriter(tmp_path / "layer", "preprocessed", Key("t", {"a": 1}), "none")
    writer.add_shard(shard_name(0), _columns(6))
    writer.finish()
    layer = Layer.open(tmp_path / "layer")
    path = layer.path(layer.shards[0])
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[: layer.shards[0].arrays["x"][0] + 100])
    with pytest.raises(LayerCorruptError, match="shorter than the layer index says"):
        ShardColumns(path, layer.shards[0]).read("x")
    with pytest.raises(LayerCorruptError, match="does not match the sha256"):  # what a stage runs first
        layer.check_shard(layer.shards[0])
