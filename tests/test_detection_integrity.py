"""Every detection read path checks what it reads, and the seed's writer never loses a valid cache."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from evalstack.cli.verify import verify_layer
from evalstack.core.layers import INDEX_NAME, LayerCorruptError, StoreError
from evalstack.detection.adapter import PostProcess, load_detector
from evalstack.detection.layer import open_detections, read_table
from evalstack.detection.perceptionmetrics import CacheReader, CacheWriter, is_cache_valid
from evalstack.detection.postprocess import postprocess_layer
from tests.detection_helpers import coco_project, export_tiny_detector, infer_and_postprocess, spec

HASH_A, HASH_B = "a" * 64, "b" * 64


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = coco_project(tmp_path_factory.mktemp("integrity"))
    adapter = load_detector(spec(export_tiny_detector(root / "det.pt2")))
    infer_and_postprocess(root, adapter)
    return root


def _flip(path: Path, dataset: str, keep_mtime: bool) -> None:
    """Flip one bit of the first value of `dataset` in place; optionally put the mtime back (bit rot)."""
    status = os.stat(path)
    with h5py.File(path, "r") as handle:
        offset = handle[dataset].id.get_offset()
    with open(path, "r+b") as handle:
        handle.seek(offset + 2)
        byte = handle.read(1)
        handle.seek(offset + 2)
        handle.write(bytes([byte[0] ^ 0x01]))
    if keep_mtime:
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def _copy(built: Path, tmp_path: Path, name: str) -> Path:
    import shutil

    return Path(shutil.copytree(built / name, tmp_path / name))


def test_a_flipped_box_bit_is_refused_naming_the_file_and_the_repair(built, tmp_path):
    layer_dir = _copy(built, tmp_path, "det")
    shard = layer_dir / "00000.h5"
    _flip(shard, "bboxes", keep_mtime=False)
    with pytest.raises(LayerCorruptError) as error:
        read_table(open_detections(layer_dir))
    message = str(error.value)
    assert str(shard) in message and "does not match the sha256" in message
    assert f"dvc checkout --relink --force {layer_dir}" in message and "dvc repro -f" in message


def test_bit_rot_with_unchanged_mtime_is_caught_by_per_image_checksums(built, tmp_path):
    layer_dir = _copy(built, tmp_path, "det")
    shard = layer_dir / "00000.h5"
    recorded = {s.name: s.sha256 for s in open_detections(layer_dir).shards}
    _flip(shard, "bboxes", keep_mtime=True)
    trusting = lambda path: recorded[Path(path).name]  # noqa: E731 - remembered hashes trust an unchanged stat
    with pytest.raises(LayerCorruptError, match=r"the data of 1 image\(s\) \(id 1\) does not match their checksums"):
        read_table(open_detections(layer_dir), trusting)
    problems = [str(p) for p in verify_layer(layer_dir)]
    assert any("item 0 (id 1" in p and "does not match its checksum" in p for p in problems), problems


def test_postprocessing_refuses_damaged_candidates_naming_the_image(built, tmp_path):
    layer_dir = _copy(built, tmp_path, "det.cand")
    _flip(layer_dir / "00000.h5", "cand_scores", keep_mtime=False)
    assert any("item 0 (id 1" in str(p) for p in verify_layer(layer_dir))
    with pytest.raises(LayerCorruptError, match="00000.h5 does not match the sha256"):
        postprocess_layer(layer_dir, tmp_path / "out", PostProcess())


def test_is_cache_valid_says_false_for_a_missing_or_truncated_shard_and_the_reader_names_damage(built, tmp_path):
    model_hash = open_detections(built / "det").index.stats["model_hash"]
    layer_dir = _copy(built, tmp_path, "det")
    assert is_cache_valid(layer_dir, model_hash)
    shard = layer_dir / "00001.h5"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 64])  # truncated
    assert not is_cache_valid(layer_dir, model_hash)
    with pytest.raises(LayerCorruptError, match="00001.h5 does not match the sha256"):
        CacheReader(layer_dir, model_hash)
    shard.unlink()
    assert not is_cache_valid(layer_dir, model_hash)
    with pytest.raises(StoreError, match="00001.h5 is listed in the index but missing"):
        CacheReader(layer_dir, model_hash)


def _rows(n: int, offset: float = 0.0) -> list[tuple]:
    rng = np.random.default_rng(int(offset))
    return [(f"img{i}", None, rng.random((2, 4), dtype=np.float32) + offset, [1, 2],
             np.asarray([0.9, 0.4], np.float32)) for i in range(n)]


def _write(path: Path, model_hash: str, rows: list[tuple], **options) -> None:
    with CacheWriter(path, "m", "val", model_hash, shard_size=2, **options) as writer:
        for row in rows:
            writer.write_image(*row)


_CRASH = """
import os, sys
import numpy as np
from evalstack.detection.perceptionmetrics import CacheWriter
writer = CacheWriter(sys.argv[1], "m", "val", "b" * 64, shard_size=2)
for i in range(5):  # two shards are written, then the process dies mid-loop
    writer.write_image(f"new{i}", None, np.zeros((1, 4), np.float32), [0], [0.5])
os._exit(1)
"""


def test_a_writer_that_dies_mid_loop_leaves_the_old_cache_valid(tmp_path):
    cache = tmp_path / "cache"
    old_rows = _rows(5)
    _write(cache, HASH_A, old_rows)
    index_before = (cache / INDEX_NAME).read_bytes()
    result = subprocess.run([sys.executable, "-c", _CRASH, str(cache)], env={**os.environ}, capture_output=True)
    assert result.returncode == 1
    staged = list(cache.parent.glob(".cache.staging-*/*.h5"))
    assert len(staged) == 2 and len(list(cache.glob("*.h5"))) == 3  # the dead writer's two shards lie beside it
    assert (cache / INDEX_NAME).read_bytes() == index_before
    assert is_cache_valid(cache, HASH_A) and not is_cache_valid(cache, HASH_B)
    reader = CacheReader(cache, HASH_A)
    assert reader.image_ids() == [row[0] for row in old_rows]
    np.testing.assert_array_equal(reader.read_preds("img3")["bboxes"], old_rows[3][2])
    with pytest.raises(RuntimeError, match="in the loop"):  # an exception in the block: same
        with CacheWriter(cache, "m", "val", HASH_B, shard_size=1) as writer:
            writer.write_image("x", None, [[0, 0, 1, 1]], [0], [0.5])
            raise RuntimeError("in the loop")
    assert CacheReader(cache, HASH_A).image_ids() == [row[0] for row in old_rows]
    new_rows = _rows(3, offset=10.0)
    _write(cache, HASH_B, new_rows)  # a complete write replaces it, and the old and dead shards go
    assert is_cache_valid(cache, HASH_B) and not is_cache_valid(cache, HASH_A)
    assert CacheReader(cache, HASH_B).image_ids() == ["img0", "img1", "img2"]
    assert {p.name for p in cache.glob("*.h5")} == {s.name for s in open_detections(cache).shards}
    assert not list(cache.parent.glob(".cache.*"))  # no staging or retired directory left behind
