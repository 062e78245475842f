"""The seed's (PerceptionMetrics PR #568) tests, ported to the detections layer, plus what the layer adds."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from evalstack.core.layers import INDEX_NAME, StoreError
from evalstack.detection.layer import open_detections, read_table
from evalstack.detection.perceptionmetrics import (
    CacheReader,
    CacheStaleError,
    CacheWriter,
    compute_model_hash,
    is_cache_valid,
)

HASH_A = "deadbeef1234567890abcdef" * 2
HASH_B = "cafebabe0987654321fedcba" * 2


def _fake_data(n: int = 5, c: int = 3, h: int = 16, w: int = 16) -> list:
    rng = np.random.default_rng(42)
    rows = []
    for i in range(n):
        n_det = int(rng.integers(0, 8)) if i else 0  # the first image has no detections
        rows.append((
            f"img_{i:06d}",
            rng.random((c, h, w)).astype("float32"),
            rng.random((n_det, 4)).astype("float32"),
            rng.integers(0, 80, size=(n_det,)).astype("int64"),
            rng.random((n_det,)).astype("float32"),
        ))
    return rows


def _write(path: Path, rows: list, **kw) -> None:
    with CacheWriter(path, "yolov8n", "val2017", HASH_A, **kw) as writer:
        for row in rows:
            writer.write_image(*row)


def test_round_trip_across_shards(tmp_path: Path):
    data = _fake_data(7)
    _write(tmp_path / "cache", data, shard_size=3)
    with CacheReader(tmp_path / "cache", HASH_A) as reader:
        assert len(reader) == 7 and len(reader.layer.shards) == 3
        assert reader.image_ids() == [row[0] for row in data]
        for img_id, tensor, boxes, labels, scores in data:
            np.testing.assert_array_equal(reader.read_tensor(img_id), tensor)
            found = reader.read_preds(img_id)
            np.testing.assert_array_equal(found["bboxes"], boxes)
            np.testing.assert_array_equal(found["labels"], labels)
            np.testing.assert_array_equal(found["scores"], scores)


def test_zero_detection_images_read_back_as_empty_arrays(tmp_path: Path):
    empty = ("zeros", np.zeros((3, 16, 16), "float32"), np.zeros((0, 4), "float32"), np.zeros(0, "int64"),
             np.zeros(0, "float32"))
    _write(tmp_path / "cache", [empty, *_fake_data(2)[1:]])
    found = CacheReader(tmp_path / "cache", HASH_A).read_preds("zeros")
    assert found["bboxes"].shape == (0, 4) and found["bboxes"].dtype == np.float32
    assert found["labels"].shape == (0,) and found["labels"].dtype == np.int64
    assert found["scores"].shape == (0,) and found["scores"].dtype == np.float32


def test_stale_hash_raises_and_is_cache_valid_says_so(tmp_path: Path):
    _write(tmp_path / "cache", _fake_data(2))
    with pytest.raises(CacheStaleError, match="model_hash"):
        CacheReader(tmp_path / "cache", HASH_B)
    assert is_cache_valid(tmp_path / "cache", HASH_A) is True
    assert is_cache_valid(tmp_path / "cache", HASH_B) is False
    assert is_cache_valid(tmp_path / "missing", HASH_A) is False
    assert issubclass(CacheStaleError, StoreError)  # one except catches every stale layer


def test_metadata_and_ids(tmp_path: Path):
    _write(tmp_path / "cache", _fake_data(3))
    meta = CacheReader(tmp_path / "cache", HASH_A).metadata()
    assert meta["model_name"] == "yolov8n" and meta["split"] == meta["coco_split"] == "val2017"
    assert meta["num_images"] == 3 and meta["model_hash"] == HASH_A and meta["schema_version"] == 1
    assert "timestamp" in meta and meta["timestamp"] is None  # not stored: it would break byte-identity


def test_identical_writes_give_identical_bytes_unless_a_time_is_recorded(tmp_path: Path):
    for name in ("a", "b"):
        _write(tmp_path / name, _fake_data(4))
    digest = {name: [hashlib.md5(p.read_bytes()).hexdigest() for p in sorted((tmp_path / name).iterdir())]
              for name in ("a", "b")}
    assert digest["a"] == digest["b"]
    _write(tmp_path / "c", _fake_data(4), record_time=True)
    assert CacheReader(tmp_path / "c", HASH_A).metadata()["timestamp"].startswith("20")


def test_integer_ids_and_no_tensors(tmp_path: Path):
    with CacheWriter(tmp_path / "cache", "m", "val", HASH_A) as writer:
        writer.write_image(42, None, [[1, 2, 3, 4]], [1], [0.5])
        writer.write_image(7, None, np.zeros((0, 4)), [], [])
        with pytest.raises(ValueError, match="already written"):
            writer.write_image(42, None, [], [], [])
        with pytest.raises(ValueError, match="tensor shape"):
            writer.write_image(8, np.zeros((3, 4, 4)), [], [], [])
    table = read_table(open_detections(tmp_path / "cache"))
    assert table.ids.dtype == np.int64 and table.counts.tolist() == [1, 0]
    reader = CacheReader(tmp_path / "cache", HASH_A)
    assert reader.read_preds(42)["bboxes"].tolist() == [[1, 2, 3, 4]]
    with pytest.raises(StoreError, match="no tensors"):
        reader.read_tensor(42)
    with pytest.raises(KeyError, match="image 9"):
        reader.read_preds(9)


def test_a_failed_write_leaves_no_layer(tmp_path: Path):
    with pytest.raises(RuntimeError):
        with CacheWriter(tmp_path / "cache", "m", "val", HASH_A) as writer:
            writer.write_image(1, None, [], [], [])
            raise RuntimeError("inference crashed")
    assert not (tmp_path / "cache" / INDEX_NAME).exists()
    assert is_cache_valid(tmp_path / "cache", HASH_A) is False


def test_compute_model_hash_follows_the_weights(tmp_path: Path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    assert compute_model_hash(file_path=path) == hashlib.sha256(b"weights").hexdigest()
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert compute_model_hash(model=a) != compute_model_hash(model=b)  # same parameter count
    b.load_state_dict(a.state_dict())
    assert compute_model_hash(model=a) == compute_model_hash(model=b)
    with pytest.raises(ValueError):
        compute_model_hash()
