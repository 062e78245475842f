import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from evalstack.demo.shapes.dataset import SHAPES, ShapesConfig, render_image, write_shapes_dataset

SMALL = ShapesConfig(n_train=12, n_val=6, seed=3)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_is_byte_identical_across_runs(tmp_path: Path):
    write_shapes_dataset(tmp_path / "a", SMALL)
    write_shapes_dataset(tmp_path / "b", SMALL)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert len(_digests(tmp_path / "a")) == 12 + 6 + 2


def test_an_image_does_not_depend_on_how_many_are_made():
    a, objects_a = render_image(SMALL, "val", 4)
    b, objects_b = render_image(ShapesConfig(n_train=500, n_val=900, seed=3), "val", 4)
    assert np.array_equal(a, b) and objects_a == objects_b
    other, _ = render_image(ShapesConfig(seed=4), "val", 4)
    assert other.shape != a.shape or not np.array_equal(other, a)


def test_annotations_load_in_pycocotools_and_describe_the_pixels(tmp_path: Path):
    paths = write_shapes_dataset(tmp_path, ShapesConfig(n_train=40, n_val=2, seed=0))
    coco = COCO(str(paths["train"]))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES)
    empty = [i for i in coco.getImgIds() if not coco.getAnnIds(imgIds=[i])]
    assert 0 < len(empty) < 40  # some images hold no object: zero-ground-truth images always exist
    sizes = {(img["width"], img["height"]) for img in coco.loadImgs(coco.getImgIds())}
    assert len(sizes) > 1  # varying sizes exercise letterboxing
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(ann["image_id"])[0]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
        assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
    document = json.loads(paths["train"].read_text())
    assert len({a["id"] for a in document["annotations"]}) == len(document["annotations"])


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="min_object"):
        ShapesConfig(min_object=100, max_object=50)
