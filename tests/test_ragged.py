import numpy as np
import pytest

from evalstack.core.keys import Key
from evalstack.core.kinds import DETECTIONS_KIND
from evalstack.core.layers import Layer, LayerWriter
from evalstack.core.ragged import check_offsets, counts_of, pack, unpack
from evalstack.detection.boxes import Detections
from evalstack.detection.layer import DetectionTable, read_table, write_detections_shard


def test_pack_and_unpack_keep_empty_items():
    arrays = [np.ones((2, 4)), np.zeros((0, 4)), [], np.full((1, 4), 7.0)]
    flat, offsets = pack(arrays, np.float32, (4,))
    assert flat.shape == (3, 4) and flat.dtype == np.float32 and offsets.tolist() == [0, 2, 2, 2]
    assert counts_of(offsets, len(flat)).tolist() == [2, 0, 0, 1]
    assert [len(part) for part in unpack(flat, offsets)] == [2, 0, 0, 1]
    assert pack([], np.int64)[0].shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        pack([np.ones((2, 3))], np.float32, (4,))


def test_corrupt_offsets_are_detected():
    check_offsets(np.asarray([0, 2, 2]), 3, "ok")
    for offsets, total in (([1, 2], 3), ([0, 3, 2], 3), ([0, 4], 3), ([], 2)):
        with pytest.raises(ValueError, match="x.h5"):
            check_offsets(np.asarray(offsets, np.int64), total, "x.h5")


def test_tables_join_across_shards_with_shifted_offsets(tmp_path):
    found = [Detections(np.full((n, 4), i, np.float32), np.full(n, i), np.full(n, i / 10, np.float32))
             for i, n in enumerate([2, 0, 3, 1, 0])]
    writer = LayerWriter(tmp_path / "det", DETECTIONS_KIND, Key("predictions", {}))
    for number, rows in enumerate((slice(0, 2), slice(2, 5))):
        keys = [f"{i:064x}" for i in range(5)][rows]
        table = DetectionTable.from_detections(keys, list(range(5))[rows], ["val", "test", "val"][: len(keys)], found[rows])
        write_detections_shard(writer, f"{number:05d}.h5", table)
    writer.stats = {"layout": 1}
    writer.finish()
    table = read_table(Layer.open(tmp_path / "det"))
    assert table.counts.tolist() == [2, 0, 3, 1, 0] and table.offsets.tolist() == [0, 2, 2, 5, 6]
    assert table.splits.tolist() == ["val", "test", "val", "test", "val"]
    for row, expected in enumerate(found):
        assert np.array_equal(table.detections(row).labels, expected.labels)


def test_per_item_checksums_change_with_any_bit_of_their_item_only():
    from evalstack.core.ragged import offsets_for, ragged_checksums

    rng = np.random.default_rng(5)
    offsets = offsets_for(np.asarray([3, 0, 5, 1, 4]))
    boxes, labels, scores = rng.random((13, 4), dtype=np.float32), rng.integers(0, 9, 13), rng.random(13, dtype=np.float32)
    base = ragged_checksums(offsets, [boxes, labels, scores])
    assert base.dtype == np.uint64 and len(base) == 5 and len(set(base.tolist())) == 5
    item_of_row = np.repeat(np.arange(5), [3, 0, 5, 1, 4])
    for array in (boxes, labels, scores):
        for row in range(13):
            for bit in (0, 7, 31):
                damaged = array.copy()
                damaged.reshape(13, -1).view(np.uint8)[row, bit // 8] ^= 1 << (bit % 8)
                flats = [damaged if a is array else a for a in (boxes, labels, scores)]
                assert np.flatnonzero(ragged_checksums(offsets, flats) != base).tolist() == [item_of_row[row]]
    swapped = labels.copy()
    swapped[[5, 6]] = swapped[[6, 5]]
    if labels[5] != labels[6]:
        assert np.flatnonzero(ragged_checksums(offsets, [boxes, swapped, scores]) != base).tolist() == [2]
    shifted = offsets.copy()
    shifted[3] += 1  # a damaged offset moves a row from one image to the next
    assert set(np.flatnonzero(ragged_checksums(shifted, [boxes, labels, scores]) != base).tolist()) == {2, 3}
    assert ragged_checksums(np.zeros(0, np.int64), [np.zeros((0, 4), np.float32)]).shape == (0,)
