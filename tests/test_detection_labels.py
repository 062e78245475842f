"""Model class indices → dataset categories (issue 22, item 2): presets, explicit maps, the check before any
forward pass, and a category the model cannot predict warned about by name instead of lowering mAP silently."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import yaml

from evalstack.config import ConfigError, ModelSpec, model_spec
from evalstack.core.coco_labels import COCO80, COCO91
from evalstack.detection.evaluation import Scoring, evaluate_detector, write_detection_outputs
from evalstack.detection.labels import NOT_SCORED, CategoryWarning, label_map
from tests.test_detection_evaluation import KEY, _found, _layers, _outputs
from tests.test_detection_metrics import A, B

REPO = Path(__file__).resolve().parents[1]
SHAPES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 7, "name": "triangle"}]
# COCO 2017's categories: torchvision's list is indexed by category id (N/A: ids COCO does not use)
COCO_CATEGORIES = [{"id": i, "name": n} for i, n in enumerate(COCO91) if n not in ("__background__", "N/A")]
# The well-known coco80 → coco91 table (Ultralytics' coco80_to_coco91_class, pycocotools' category ids)
COCO80_TO_91 = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
                *range(84, 91)]


def detector(labels, preset: str | None = None) -> ModelSpec:
    return ModelSpec("m", Path("unused"), "torch_detection", "p", labels, task="detect", label_preset=preset)


def _params(labels, **model) -> dict:
    return {"labels": {"shapes": ["circle", "square", "triangle"]},
            "models": {"m": {"file": "m.pt2", "adapter": "torch_detection", "pipeline": "p", "task": "detect",
                             "labels": labels, **model}}}


def test_presets_are_torchvisions_list_and_the_standard_coco80_table():
    from torchvision.models._meta import _COCO_CATEGORIES  # what `weights.meta["categories"]` holds, no download

    assert list(COCO91) == _COCO_CATEGORIES and len(COCO80) == 80
    assert label_map(detector(COCO80, "coco80"), COCO_CATEGORIES).category_ids.tolist() == COCO80_TO_91
    coco91 = label_map(detector(COCO91, "coco91"), COCO_CATEGORIES)
    real = [i for i, name in enumerate(COCO91) if name not in ("__background__", "N/A")]
    assert coco91.category_ids[real].tolist() == real  # index = category id
    assert set(coco91.category_ids[[0, 12, 26, 83]].tolist()) == {NOT_SCORED}
    assert coco91.lacking == () and coco91.unmatched == ()


def test_params_name_a_preset_a_list_or_a_map():
    assert model_spec(_params("coco80"), "m").labels == COCO80
    assert model_spec(_params("coco91"), "m").label_preset == "coco91"
    assert model_spec(_params("shapes"), "m").labels == ("circle", "square", "triangle")
    declared = {**_params("coco80"), "labels": {"coco80": ["circle"]}}
    assert model_spec(declared, "m").labels == ("circle",)  # a declared list of that name is what it says
    assert model_spec(_params({0: "square", 2: 7}), "m").labels == ("square", None, 7)
    assert model_spec(_params({"1": 1}, options={"num_classes": 4}), "m").labels == (None, 1, None, None)
    for bad, message in (({-1: 1}, "not a model class index"), ({0: 1.5}, "not a dataset category id or name"),
                         ({}, "empty"), ("coco81", "not declared under labels")):
        with pytest.raises(ConfigError, match=message):
            model_spec(_params(bad), "m")
    with pytest.raises(ConfigError, match="num_classes 2"):
        model_spec(_params({3: 1}, options={"num_classes": 2}), "m")


def test_a_map_gives_ids_by_name_or_id_and_refuses_what_the_dataset_lacks():
    mapped = label_map(detector(("triangle", None, 1)), SHAPES)
    assert mapped.category_ids.tolist() == [7, NOT_SCORED, 1]
    assert mapped.predictable == ("circle", "triangle") and mapped.lacking == ("square",)
    with pytest.raises(ConfigError, match=r"labels 1 → 'cirle', 2 → category id 3: not categories of the dataset "
                                          r"\(1: circle, 2: square, 7: triangle\)"):
        label_map(detector(("square", "cirle", 3)), SHAPES)
    # a preset's classes the dataset does not have are dropped, not refused: a COCO model on a subset of COCO
    subset = label_map(detector(COCO80, "coco80"), [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}])
    assert subset.category_ids[[0, 2]].tolist() == [1, 3] and (subset.category_ids == NOT_SCORED).sum() == 78
    assert subset.lacking == () and len(subset.unmatched) == 78
    many = label_map(detector(("circle",)), [*SHAPES, {"id": 9, "name": "star"}])
    assert many.metrics() == {"model_lacks": "square, triangle, … (3)"}  # short enough for `dvc metrics show`


def test_a_category_the_model_lacks_is_warned_about_by_name_and_recorded(tmp_path: Path):
    # the model knows circle only; square has ground truth in the split (image 2), so it would score AP 0
    per_image = [_found([A, B], [0, 0], [0.9, 0.8]), _found([], [], []), _found([[0, 0, 10, 10]], [0], [0.95])]
    raw, det = _layers(tmp_path, per_image)
    spec = detector(("circle",))
    with pytest.warns(CategoryWarning, match=r"model m cannot predict dataset categories \['square'\].*AP 0"):
        everything = evaluate_detector(raw, det, spec, KEY, "val")
    write_detection_outputs(everything, "val", _outputs(tmp_path / "out"))
    metrics = json.loads((tmp_path / "out/m.json").read_text())
    details = json.loads((tmp_path / "out/details.json").read_text())
    assert metrics["model_lacks"] == "square"
    assert details["categories"]["scored"] == ["circle", "square"] and details["categories"]["model_lacks"] == ["square"]
    assert metrics["mAP"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-12)  # square's AP 0 is in it
    with pytest.warns(CategoryWarning, match=r"\['square'\].*left out of mAP"):
        own = evaluate_detector(raw, det, spec, KEY, "val", Scoring(categories="model"))
    assert own.report.stats["mAP"] == pytest.approx(2 / 3, abs=1e-12)  # only what the model can predict
    assert own.categories["scored"] == ["circle"] and list(own.report.per_class_ap) == ["circle"]


def test_detections_of_a_class_that_is_no_dataset_category_are_not_scored(tmp_path: Path):
    per_image = [_found([A, B], [0, 1], [0.9, 0.8]), _found([], [], []), _found([], [], [])]
    raw, det = _layers(tmp_path, per_image)
    evaluation = evaluate_detector(raw, det, detector((None, "circle", "square")), KEY, "val")
    # index 0 maps to nothing: its box on image 1 is dropped, the other is a circle
    assert [(r["image_id"], r["category_id"]) for r in evaluation.results] == [(1, 1)]


def _stage_project(tmp_path: Path, labels) -> Path:
    raw, _ = _layers(tmp_path, [_found([], [], [])] * 3)
    params = {**_params(labels), "evaluate": {"split": "val", "count_threshold": 0.5}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return raw


def _infer_stage(tmp_path: Path, raw: Path, monkeypatch) -> None:
    """The infer stage script, in this process. The model file does not exist: a check that ran after loading
    the model (let alone a forward pass) could not raise what these tests expect."""
    monkeypatch.setattr(sys, "argv", ["infer.py", "--model", "m", "--raw", str(raw), "--preprocessed",
                                      str(tmp_path / "pre"), "--out", str(tmp_path / "cand"), "--params",
                                      str(tmp_path / "params.yaml")])
    monkeypatch.setenv("EVALSTACK_DEBUG", "1")  # the stage wrapper re-raises instead of printing one line
    runpy.run_path(str(REPO / "stages/detection/infer.py"), run_name="__main__")


def test_infer_checks_the_labels_against_the_dataset_before_loading_the_model(tmp_path: Path, monkeypatch):
    with pytest.raises(ConfigError, match="labels 1 → 'star': not categories of the dataset"):
        _infer_stage(tmp_path / "a", _stage_project(tmp_path / "a", {0: "circle", 1: "star"}), monkeypatch)
    assert not (tmp_path / "a/cand").exists()
    with pytest.warns(CategoryWarning, match=r"cannot predict dataset categories \['square'\]"):
        with pytest.raises(Exception, match="m.pt2"):  # …and only then does it get to the model file
            _infer_stage(tmp_path / "b", _stage_project(tmp_path / "b", ["circle"]), monkeypatch)


def test_a_detection_adapter_option_beside_options_is_refused_naming_where_it_goes():
    """detection/dvc.yaml tracks models.<name>.options for infer and grid: a key beside it would change
    candidates without DVC rerunning them (a stale result)."""
    with pytest.raises(ConfigError, match=r"models.m: builder, num_classes must go under models.m.options: "
                                          r"\(e.g. `options: \{builder: 'x'\}`\).*a stale result would be reused"):
        model_spec(_params("shapes", builder="x", num_classes=4), "m")
    spec = model_spec(_params("shapes", options={"builder": "x", "layout": "NCHW"}), "m")
    assert spec.options == {"builder": "x"} and spec.layout == "NCHW"


def test_a_post_processing_key_under_options_is_refused_naming_where_it_goes():
    """detection/dvc.yaml tracks the post-processing keys beside options: for postprocess and robustness (found by
    an audit: `options: {confidence_threshold: 0.3}` reran infer and grid, which give the same candidates, and
    left postprocess and robustness at the old threshold, exit 0)."""
    with pytest.raises(ConfigError, match=r"models.m.options: confidence_threshold, max_detections must go beside "
                                          r"options:, as models.m.confidence_threshold: 0.3.*stale detections"):
        model_spec(_params("shapes", options={"confidence_threshold": 0.3, "max_detections": 10}), "m")
    spec = model_spec(_params("shapes", confidence_threshold=0.3, options={"builder": "x"}), "m")
    assert spec.options == {"confidence_threshold": 0.3, "builder": "x"}
