import json
from pathlib import Path

import numpy as np
import pytest

from evalstack.core.layers import INDEX_NAME, Layer
from evalstack.sources.coco import CocoFetchConfig, coco_document, fetch_coco_layer, read_ground_truth
from evalstack.sources.registry import SourceError, read_local
from tests.coco_fixture import ANNOTATIONS, document, write_coco


def _config(split, **kw) -> CocoFetchConfig:
    return CocoFetchConfig(splits={"val": split}, shard_size=2, **kw)


def test_ground_truth_round_trips_through_the_raw_layer(tmp_path: Path):
    split = write_coco(tmp_path / "src")
    index = fetch_coco_layer(_config(split), tmp_path / "raw")
    assert index.n_items == 3 and len(index.shards) == 2 and index.stats["annotations"] == 3
    rebuilt = coco_document(read_ground_truth(tmp_path / "raw"), "val")
    original = json.loads(Path(split.annotations).read_text())
    assert rebuilt["images"] == original["images"]
    assert rebuilt["annotations"] == original["annotations"]
    assert rebuilt["categories"] == original["categories"]
    empty = [i for i in read_ground_truth(tmp_path / "raw").images if i.image_id == 3][0]
    assert len(empty.truth) == 0 and empty.truth.bbox.shape == (0, 4)  # zero-GT image kept, empty range


def test_raw_layer_is_deterministic_and_keyed_by_content(tmp_path: Path):
    split = write_coco(tmp_path / "src")
    fetch_coco_layer(_config(split), tmp_path / "a")
    fetch_coco_layer(_config(split), tmp_path / "b")
    assert [s.sha256 for s in Layer.open(tmp_path / "a").shards] == [s.sha256 for s in Layer.open(tmp_path / "b").shards]
    keys = Layer.open(tmp_path / "a").item_keys()
    assert len(set(keys)) == 3 and all(len(k) == 64 for k in keys)


def test_every_byte_is_read_through_the_given_reader(tmp_path: Path):
    split = write_coco(tmp_path / "src")
    seen = []

    def reader(url: str) -> bytes:  # stands in for an HTTP transport
        seen.append(url)
        return read_local(url)

    fetch_coco_layer(_config(split), tmp_path / "raw", read_bytes=reader)
    assert seen[0].endswith("instances_val.json")
    assert sorted(Path(u).name for u in seen[1:]) == ["empty.png", "one.png", "two.png"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"annotations": [dict(ANNOTATIONS[0], category_id=9)]}, "category_id 9 is not in the categories"),
        ({"annotations": [dict(ANNOTATIONS[0], image_id=9)]}, "image_id 9 is not in the images"),
        ({"annotations": [dict(ANNOTATIONS[0], bbox=[0, 0, -1, 2])]}, "negative size"),
        ({"annotations": [dict(ANNOTATIONS[0], bbox=[0, 0, "x", 2])]}, "not a finite number"),
        ({"annotations": [ANNOTATIONS[0], ANNOTATIONS[0]]}, "annotation id 1 appears twice"),
        ({"images": [document()["images"][0]] * 2, "annotations": []}, "image id 1 appears twice"),
    ],
)
def test_malformed_annotations_are_refused_naming_the_item(tmp_path: Path, change, message):
    split = write_coco(tmp_path / "src", document(**change))
    with pytest.raises(SourceError, match=message):
        fetch_coco_layer(_config(split), tmp_path / "raw")
    assert not (tmp_path / "raw" / INDEX_NAME).exists()


def test_unsafe_file_names_never_reach_the_filesystem(tmp_path: Path):
    split = write_coco(tmp_path / "src")
    doc = document()
    doc["images"][0]["file_name"] = "../../etc/passwd"
    Path(split.annotations).write_text(json.dumps(doc))
    with pytest.raises(SourceError, match="unsafe"):
        fetch_coco_layer(_config(split), tmp_path / "raw")


def test_image_that_disagrees_with_its_declared_size_is_refused(tmp_path: Path):
    split = write_coco(tmp_path / "src")
    doc = document()
    doc["images"][1]["width"] = 41
    Path(split.annotations).write_text(json.dumps(doc))
    with pytest.raises(SourceError, match=r"image 2 \(two.png\): the file is 40×40, the JSON says 41×40"):
        fetch_coco_layer(_config(split), tmp_path / "raw")


def test_scheme_and_pixel_guards(tmp_path: Path):
    split = write_coco(tmp_path / "src")
    with pytest.raises(SourceError, match="scheme 'http' is not allowed"):
        fetch_coco_layer(_config(type(split)("http://127.0.0.1:9/a.json", split.images)), tmp_path / "r1")
    with pytest.raises(SourceError, match="decompression bomb"):
        fetch_coco_layer(_config(split, max_pixels=1000), tmp_path / "r2")
    (Path(split.images) / "two.png").unlink()
    with pytest.raises(SourceError, match="file not found"):
        fetch_coco_layer(_config(split), tmp_path / "r3")


def test_label_names_map_to_category_ids(tmp_path: Path):
    split = write_coco(tmp_path / "src")
    fetch_coco_layer(_config(split), tmp_path / "raw")
    dataset = read_ground_truth(tmp_path / "raw")
    assert dataset.category_ids(("square", "circle"), "m").tolist() == [2, 1]
    with pytest.raises(SourceError, match=r"labels \['cat'\] are not categories"):
        dataset.category_ids(("circle", "cat"), "m")
    with pytest.raises(SourceError, match="no images in split 'test'"):
        coco_document(dataset, "test")
    assert np.array_equal(dataset.images[0].truth.ann_id, [1, 2])


def test_a_missing_image_file_is_named_by_image_id_and_path(tmp_path: Path):
    split = write_coco(tmp_path / "src")
    (Path(split.images) / "two.png").unlink()
    with pytest.raises(SourceError, match=r"val image 2 \(two.png\): .*file not found: .*images/val/two.png"):
        fetch_coco_layer(CocoFetchConfig({"val": split}), tmp_path / "raw")


# -- trust round 2, item 12: ground truth is checked against its image -------------------------------
UNMATCHABLE = [
    ({"id": 7, "image_id": 2, "category_id": 1, "bbox": [5000.0, 5000.0, 50.0, 50.0], "area": 2500.0, "iscrowd": 0},
     r"annotation 7 \(image 2, two.png\): bbox \[5000.0, 5000.0, 50.0, 50.0\] lies outside its 40×40 image"),
    ({"id": 8, "image_id": 1, "category_id": 2, "bbox": [12.0, 12.0, 0.0, 9.0], "area": 0.0, "iscrowd": 0},
     r"annotation 8 \(image 1, one.png\): bbox \[12.0, 12.0, 0.0, 9.0\] has zero area"),
]


@pytest.mark.parametrize("bad, message", UNMATCHABLE, ids=["outside", "zero area"])
def test_a_box_no_detection_can_match_is_an_error_naming_image_and_annotation(tmp_path: Path, bad, message):
    split = write_coco(tmp_path / "src", document(annotations=[*ANNOTATIONS, bad]))
    with pytest.raises(SourceError, match=message + r".*fetch.on_error: skip drops such boxes"):
        fetch_coco_layer(_config(split), tmp_path / "raw")
    assert not (tmp_path / "raw" / INDEX_NAME).exists()


def test_under_skip_unmatchable_boxes_are_dropped_and_listed(tmp_path: Path, capsys):
    split = write_coco(tmp_path / "src", document(annotations=[*ANNOTATIONS, *(bad for bad, _ in UNMATCHABLE)]))
    index = fetch_coco_layer(_config(split, on_error="skip"), tmp_path / "raw")
    assert index.stats["annotations"] == 3  # the three real boxes only
    assert [d["annotation_id"] for d in index.stats["dropped_annotations"]] == [7, 8]
    assert "WARNING dropped 2 ground-truth boxes no detection can match (on_error: skip)" in capsys.readouterr().err
    # a box overhanging its image by a rounding error is kept
    edge = {"id": 9, "image_id": 2, "category_id": 1, "bbox": [0.0, 0.0, 40.6, 40.0], "area": 1624.0, "iscrowd": 0}
    split = write_coco(tmp_path / "src2", document(annotations=[*ANNOTATIONS, edge]))
    assert fetch_coco_layer(_config(split), tmp_path / "raw2").stats["annotations"] == 4
