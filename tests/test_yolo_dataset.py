"""YOLO-format datasets (data.yaml, images/, labels/*.txt) → the same COCO raw layer as a COCO JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from evalstack.config import load_params
from evalstack.core.layers import INDEX_NAME, Layer
from evalstack.demo.cards import encode_png
from evalstack.detection.metrics import coco_from_document, run_cocoeval
from evalstack.params_schema import schema_errors
from evalstack.sources.coco import CocoFetchConfig, CocoSplit, coco_document, fetch_coco_layer, read_ground_truth
from evalstack.sources.detection_source import detection_fetch_config, fetch_detection_layer
from evalstack.sources.registry import SourceError
from evalstack.sources.yolo_dataset import YoloFetchConfig, fetch_yolo_layer, label_path

NAMES = ["circle", "square", "triangle"]  # triangle appears in no label file
# file → (width, height, label text or None for no label file). Sizes and boxes are chosen so the
# normalised values are exact binary fractions: the expected pixels below are then exact too.
VAL = {
    "a.png": (64, 48, "0 0.25 0.5 0.25 0.5\n1 0.75 0.25 0.25 0.25\n"),  # non-square, two boxes
    "b.png": (40, 40, "1 0.25 0.25 0.75 0.25 0.5 0.75\n"),  # a polygon → its bounding box
    "c.png": (32, 24, None),  # no label file: no objects
    "d.png": (32, 16, "\n0 0.25 0.5 0.25 0.5\n"),  # a blank line is skipped
}
EXPECTED = [  # the COCO document the YOLO dataset stands for
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [8.0, 12.0, 16.0, 24.0], "area": 384.0, "iscrowd": 0},
    {"id": 2, "image_id": 1, "category_id": 2, "bbox": [40.0, 6.0, 16.0, 12.0], "area": 192.0, "iscrowd": 0},
    {"id": 3, "image_id": 2, "category_id": 2, "bbox": [10.0, 10.0, 20.0, 20.0], "area": 400.0, "iscrowd": 0},
    {"id": 4, "image_id": 4, "category_id": 1, "bbox": [4.0, 4.0, 8.0, 8.0], "area": 64.0, "iscrowd": 0},
]


def write_yolo(root: Path, files: dict = VAL, split: str = "val", names=NAMES) -> Path:
    rng = np.random.default_rng(0)
    for name, (width, height, labels) in files.items():
        image = root / "images" / split / name
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(encode_png(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)))
        if labels is not None:
            label_path(image).parent.mkdir(parents=True, exist_ok=True)
            label_path(image).write_text(labels)
    data = root / "data.yaml"
    data.write_text(f"path: .\n{split}: images/{split}\nnames: {json.dumps(names)}\n")
    return data


def _config(data: Path, **kw) -> YoloFetchConfig:
    return YoloFetchConfig(data=str(data), splits=("val",), shard_size=3, **kw)


def equivalent_coco(root: Path) -> CocoSplit:
    document = {
        "images": [{"id": i, "file_name": name, "width": w, "height": h}
                   for i, (name, (w, h, _)) in enumerate(sorted(VAL.items()), start=1)],
        "annotations": EXPECTED,
        "categories": [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(NAMES)],
    }
    (root / "instances_val.json").write_text(json.dumps(document))
    return CocoSplit(str(root / "instances_val.json"), str(root / "images" / "val"))


def test_label_path_follows_ultralytics():
    assert label_path(Path("/d/images/val/x/a.b.jpg")) == Path("/d/labels/val/x/a.b.txt")
    assert label_path(Path("/images/d/images/a.png")) == Path("/images/d/labels/a.txt")  # the last /images/
    assert label_path(Path("/d/imgs/a.png")) == Path("/d/imgs/a.txt")  # none: beside the image


def test_the_raw_layer_holds_the_yolo_boxes_as_exact_coco_boxes(tmp_path: Path):
    index = fetch_yolo_layer(_config(write_yolo(tmp_path / "ds")), tmp_path / "raw")
    assert index.n_items == 4 and len(index.shards) == 2 and index.stats["annotations"] == 4
    dataset = read_ground_truth(tmp_path / "raw")
    document = coco_document(dataset, "val")
    assert document["annotations"] == EXPECTED
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in document["images"]] == [
        (1, "a.png", 64, 48), (2, "b.png", 40, 40), (3, "c.png", 32, 24), (4, "d.png", 32, 16)]
    assert document["categories"] == [{"id": 1, "name": "circle", "supercategory": ""},
                                      {"id": 2, "name": "square", "supercategory": ""},
                                      {"id": 3, "name": "triangle", "supercategory": ""}]
    assert dataset.images[0].truth.bbox.dtype == np.float64
    assert Layer.open(tmp_path / "raw").key.parts["source"] == "yolo"


def test_a_yolo_dataset_and_its_coco_json_give_the_same_layer_and_metrics(tmp_path: Path):
    data = write_yolo(tmp_path / "ds")
    fetch_yolo_layer(_config(data), tmp_path / "yolo")
    fetch_coco_layer(CocoFetchConfig({"val": equivalent_coco(tmp_path / "ds")}, shard_size=3), tmp_path / "coco")
    from_yolo, from_coco = (coco_document(read_ground_truth(tmp_path / d), "val") for d in ("yolo", "coco"))
    assert from_yolo == from_coco
    keys = [Layer.open(tmp_path / d).item_keys().tolist() for d in ("yolo", "coco")]
    assert keys[0] == keys[1] and len(keys[0]) == 4  # the same image bytes
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": [9.0, 12.0, 16.0, 22.0], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [30.0, 6.0, 16.0, 12.0], "score": 0.8},
        {"image_id": 2, "category_id": 2, "bbox": [10.0, 11.0, 19.0, 20.0], "score": 0.7},
        {"image_id": 3, "category_id": 1, "bbox": [1.0, 1.0, 5.0, 5.0], "score": 0.6},
        {"image_id": 4, "category_id": 1, "bbox": [4.0, 4.0, 8.0, 8.0], "score": 0.5},
    ]
    stats = [run_cocoeval(coco_from_document(doc), detections).stats for doc in (from_yolo, from_coco)]
    assert np.array_equal(stats[0], stats[1]) and 0 < stats[0][0] < 1


@pytest.mark.parametrize("labels, message", [
    ("0 0.5 0.5 0.25 0.25\n0 0.5 0.5 0.25\n", r"b.txt:2: 4 values; expected `class cx cy w h`"),
    ("0 0.5 0.5 0.25 0.25\n0 0.5 x 0.25 0.25\n", r"b.txt:2: '0 0.5 x 0.25 0.25' holds a value that is not a number"),
    ("0 0.5 0.5 0.25 0.25\n3 0.5 0.5 0.25 0.25\n", r"b.txt:2: class 3 is not a class index 0..2"),
    ("0 0.5 0.5 0.25 0.25\n0 0.5 0.5 1.5 0.25\n", r"b.txt:2: coordinates .* are not normalised to 0–1"),
    ("0 0.25 0.25 0.75 0.25 0.5 0.75\n0 0.5 0.5 0.25 0.25\n", r"b.txt:2: the file mixes boxes and polygons"),
], ids=["short", "not a number", "unknown class", "not normalised", "mixed"])
def test_a_malformed_label_line_names_the_file_and_the_line(tmp_path: Path, labels, message):
    data = write_yolo(tmp_path / "ds", dict(VAL, **{"b.png": (40, 40, labels)}))
    with pytest.raises(SourceError, match=message + r".*fetch.on_error: skip skips such images"):
        fetch_yolo_layer(_config(data), tmp_path / "raw")
    assert not (tmp_path / "raw" / INDEX_NAME).exists()
    # under skip the image goes (its ground truth is unknown), listed with the cause
    index = fetch_yolo_layer(_config(data, on_error="skip"), tmp_path / "skip")
    assert index.n_items == 3 and "b.txt:2" in index.stats["skipped_images"][0]["cause"]


def test_a_box_outside_its_image_is_refused_or_dropped(tmp_path: Path, capsys):
    files = dict(VAL, **{"b.png": (40, 40, "1 0.5 0.5 0.5 0.5\n0 1 1 0.5 0.5\n")})
    data = write_yolo(tmp_path / "ds", files)
    with pytest.raises(SourceError, match=r"b.txt:2 \(val image 2, b.png\): bbox \[30.0, 30.0, 20.0, 20.0\] lies "
                                          r"outside its 40×40 image.*on_error: skip drops such boxes"):
        fetch_yolo_layer(_config(data), tmp_path / "r1")
    index = fetch_yolo_layer(_config(data, on_error="skip"), tmp_path / "r2")
    assert index.stats["annotations"] == 4 and [d["annotation_id"] for d in index.stats["dropped_annotations"]] == [4]
    assert coco_document(read_ground_truth(tmp_path / "r2"), "val")["annotations"][-1]["id"] == 5  # ids by line
    assert "WARNING dropped 1 ground-truth boxes" in capsys.readouterr().err


def test_a_missing_or_undecodable_image_fails_naming_id_and_path_or_is_skipped_and_listed(tmp_path: Path, capsys):
    data = write_yolo(tmp_path / "ds")
    images = tmp_path / "ds" / "images" / "val"
    (images / "b.png").write_bytes(b"not an image at all")
    with pytest.raises(SourceError, match=r"val image 2 \(b.png\): not a decodable image.*"
                                          r"\(file .*images/val/b.png\).*on_error: skip skips such images"):
        fetch_yolo_layer(_config(data), tmp_path / "r1")
    index = fetch_yolo_layer(_config(data, on_error="skip"), tmp_path / "r2")
    assert [(s["image_id"], s["path"]) for s in index.stats["skipped_images"]] == [(2, str(images / "b.png"))]
    document = coco_document(read_ground_truth(tmp_path / "r2"), "val")
    assert [i["id"] for i in document["images"]] == [1, 3, 4]  # the others keep their ids
    # annotation ids run over the images read: d.png's box is 3 now
    assert document["annotations"] == [a for a in EXPECTED if a["image_id"] == 1] + [dict(EXPECTED[3], id=3)]
    assert "WARNING skipped 1 images that could not be read (on_error: skip)" in capsys.readouterr().err


def test_a_missing_coco_image_fails_or_is_skipped_and_listed(tmp_path: Path, capsys):
    data = write_yolo(tmp_path / "ds")
    split = equivalent_coco(tmp_path / "ds")
    (Path(split.images) / "c.png").unlink()
    with pytest.raises(SourceError, match=r"val image 3 \(c.png\): .*file not found: .*images/val/c.png"):
        fetch_coco_layer(CocoFetchConfig({"val": split}), tmp_path / "r1")
    index = fetch_coco_layer(CocoFetchConfig({"val": split}, on_error="skip"), tmp_path / "r2")
    assert index.n_items == 3 and [s["image_id"] for s in index.stats["skipped_images"]] == [3]
    assert "WARNING skipped 1 images" in capsys.readouterr().err
    # the YOLO path lists a folder, so a deleted image is simply absent; an unreadable one is skipped
    assert fetch_yolo_layer(_config(data), tmp_path / "r3").n_items == 3


def test_when_every_image_fails_no_layer_is_written(tmp_path: Path):
    data = write_yolo(tmp_path / "ds")
    for image in (tmp_path / "ds" / "images" / "val").iterdir():
        image.write_bytes(b"garbage")
    with pytest.raises(SourceError, match=r"every image failed \(4; the first: val image 1 \(a.png\)"):
        fetch_yolo_layer(_config(data, on_error="skip"), tmp_path / "raw")
    assert not (tmp_path / "raw" / INDEX_NAME).exists()


def test_data_yaml_mistakes_are_named(tmp_path: Path):
    data = write_yolo(tmp_path / "ds")
    with pytest.raises(SourceError, match=r"no split 'test' \(it has \['val'\]\)"):
        fetch_yolo_layer(YoloFetchConfig(data=str(data), splits=("test",)), tmp_path / "r")
    data.write_text("val: [images/val, images/more]\nnames: [a]\n")
    with pytest.raises(SourceError, match="is not one folder of images"):
        fetch_yolo_layer(_config(data), tmp_path / "r")
    data.write_text("val: images/val\nnames: {0: a, 2: b}\n")
    with pytest.raises(SourceError, match=r"names keys \[0, 2\] are not the class indices 0..1"):
        fetch_yolo_layer(_config(data), tmp_path / "r")
    data.write_text("val: images/val\nnames: {'1': b, '0': a, '2': c}\n")  # string keys, as Ultralytics allows
    assert fetch_yolo_layer(_config(data), tmp_path / "ok").n_items == 4
    assert [c["name"] for c in read_ground_truth(tmp_path / "ok").categories] == ["a", "b", "c"]
    data.write_text("path: elsewhere\nval: images/val\nnames: {0: a}\n")
    with pytest.raises(SourceError, match=r"folder .*ds/elsewhere/images/val not found"):
        fetch_yolo_layer(_config(data), tmp_path / "r")


def test_the_layer_key_covers_what_changes_the_layer(tmp_path: Path):
    base = _config(Path("a/data.yaml"))
    configs = [base, _config(Path("b/data.yaml")),
               YoloFetchConfig(data="a/data.yaml", splits=("val", "test"), shard_size=3),
               _config(Path("a/data.yaml"), on_error="skip"),
               _config(Path("a/data.yaml"), on_error="skip", max_pixels=100),
               _config(Path("a/data.yaml"), on_error="skip", max_bytes=100)]
    assert len({c.layer_key().hex for c in configs}) == len(configs)
    assert CocoFetchConfig({"v": CocoSplit("x", "y")}).layer_key().hex != base.layer_key().hex


def test_the_detection_fetch_params_choose_the_format(tmp_path: Path):
    data = write_yolo(tmp_path / "ds")
    fetch = {"format": "yolo", "data": str(data), "splits": ["val"], "shard_size": 256, "max_pixels": 1 << 20}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"fetch": fetch}))
    index = fetch_detection_layer(load_params(tmp_path / "params.yaml")["fetch"], tmp_path / "raw")
    assert index.n_items == 4
    assert coco_document(read_ground_truth(tmp_path / "raw"), "val")["annotations"] == EXPECTED
    coco = {"splits": {"val": {"annotations": "a.json", "images": "img"}}, "shard_size": 2, "max_pixels": 100}
    assert isinstance(detection_fetch_config(coco), CocoFetchConfig)  # no format: COCO, as before
    assert schema_errors({"fetch": coco}) == []
    for wrong in ({**fetch, "data": None}, {**fetch, "splits": {"val": coco["splits"]["val"]}},
                  {**coco, "data": str(data)}, {**coco, "splits": ["val"]}):
        errors = schema_errors({"fetch": {k: v for k, v in wrong.items() if v is not None}})
        assert len(errors) == 1 and errors[0].startswith("fetch: a mapping, expected format: "), errors
