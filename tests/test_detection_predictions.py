"""Detections computed elsewhere (issue 22, item 1: `predictions:`): a COCO results JSON scored with no model,
equal to pycocotools run directly on the same file; every entry checked, errors naming it."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import yaml

from evalstack.config import ConfigError, model_spec
from evalstack.detection.evaluation import Scoring
from evalstack.detection.labels import CategoryWarning
from evalstack.detection.predictions import PredictionsError, PredictionsSpec, evaluate_predictions, predictions_spec
from evalstack.sources.coco import CocoFetchConfig, fetch_coco_layer
from tests.coco_fixture import write_coco
from tests.test_detection_metrics import A, B, pycocotools_directly

REPO = Path(__file__).resolve().parents[1]
RESULTS = [  # circles found on image 1 (one twice), a square half-found on image 2, a stray on the empty image
    {"image_id": 1, "category_id": 1, "bbox": A, "score": 0.9},
    {"image_id": 1, "category_id": 1, "bbox": [36.5, 20.0, 19.0, 21.0], "score": 0.7},
    {"image_id": 1, "category_id": 1, "bbox": B, "score": 0.6},
    {"image_id": 2, "category_id": 2, "bbox": [5.0, 5.0, 30.0, 25.0], "score": 0.55},
    {"image_id": 3, "category_id": 2, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.95},
]


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    fetch_coco_layer(CocoFetchConfig({"val": write_coco(tmp_path / "src")}), tmp_path / "raw")
    return tmp_path / "raw"


def _file(tmp_path: Path, results) -> PredictionsSpec:
    (tmp_path / "results.json").write_text(json.dumps(results))
    return PredictionsSpec("ext", tmp_path / "results.json")


def test_metrics_equal_pycocotools_run_directly_on_the_file(raw: Path, tmp_path: Path):
    evaluation = evaluate_predictions(raw, _file(tmp_path, RESULTS), "val")
    direct = pycocotools_directly(tmp_path, RESULTS)
    assert list(evaluation.report.stats.values()) == direct  # all twelve, exactly
    assert evaluation.results == RESULTS and evaluation.forward_passes_by_split == {}
    assert evaluation.categories["scored"] == ["circle", "square"] and evaluation.images_without_detections == 0


def test_a_category_with_no_detections_in_the_file_is_named(raw: Path, tmp_path: Path):
    with pytest.warns(CategoryWarning, match=r"\['square'\]"):
        evaluation = evaluate_predictions(raw, _file(tmp_path, RESULTS[:3]), "val", Scoring(categories="model"))
    assert evaluation.categories["model_lacks"] == ["square"] and list(evaluation.report.per_class_ap) == ["circle"]


@pytest.mark.parametrize("change, message", [
    ({"image_id": 9}, r"entry 1 \(image_id 9\): image_id is not an image of split 'val'"),
    ({"category_id": 5}, r"entry 1 \(image_id 1\): category_id 5 is not a dataset category \(\[1, 2\]\)"),
    ({"bbox": [1.0, 2.0, 3.0]}, r"bbox \[1.0, 2.0, 3.0\] is not four finite numbers"),
    ({"bbox": [1.0, 2.0, float("nan"), 3.0]}, "is not four finite numbers"),
    ({"bbox": [1.0, 2.0, -3.0, 3.0]}, "negative width or height"),
    ({"score": 1.5}, r"entry 1 \(image_id 1\): score 1.5 is not a number in \[0, 1\]"),
    ({"score": None}, "score None is not a number"),
], ids=["image", "category", "short-bbox", "nan", "negative", "score", "no-score"])
def test_bad_entries_are_refused_naming_the_entry(raw: Path, tmp_path: Path, change: dict, message: str):
    results = [RESULTS[0], {**RESULTS[1], **change}]
    with pytest.raises(PredictionsError, match=message):
        evaluate_predictions(raw, _file(tmp_path, results), "val")


def test_a_file_of_another_split_or_shape_is_refused(raw: Path, tmp_path: Path):
    with pytest.raises(PredictionsError, match="not an image of split 'train'"):
        evaluate_predictions(raw, _file(tmp_path, RESULTS), "train")
    with pytest.raises(PredictionsError, match="a JSON list of detections, not dict"):
        evaluate_predictions(raw, _file(tmp_path, {"annotations": RESULTS}), "val")
    with pytest.raises(PredictionsError, match="results file not found"):
        evaluate_predictions(raw, PredictionsSpec("ext", tmp_path / "none.json"), "val")


def _params(**entry) -> dict:
    return {"models": {"det": {"file": "m.pt2", "adapter": "torch_detection", "pipeline": "p", "labels": ["a"],
                               "task": "detect"}},
            "predictions": {"ext": {"file": "results.json", **entry}}}


def test_params_refuse_post_processing_and_a_predictions_model_has_no_grid():
    assert predictions_spec(_params(), "ext", Path("proj")).file == Path("proj/results.json")
    assert predictions_spec(_params(adapter="predictions"), "ext").name == "ext"
    with pytest.raises(ConfigError, match="confidence_threshold, max_detections: a results file's detections are final"):
        predictions_spec(_params(confidence_threshold=0.3, max_detections=10), "ext")
    with pytest.raises(ConfigError, match="adapter 'yolo'"):
        predictions_spec(_params(adapter="yolo"), "ext")
    # asked for as a model (the infer or grid stage, a notebook): a clear no
    with pytest.raises(ConfigError, match="no corruption grid — grid cells need a model"):
        model_spec(_params(), "ext")
    moved = {"models": {"ext": {"file": "r.json", "adapter": "predictions", "pipeline": "p", "labels": ["a"]}}}
    with pytest.raises(ConfigError, match="adapter predictions belongs under predictions:"):
        model_spec(moved, "ext")
    clash = _params()
    clash["models"]["ext"] = clash["models"]["det"]
    with pytest.raises(ConfigError, match="models.ext exists too"):
        predictions_spec(clash, "ext")


def test_the_stage_writes_the_evaluate_outputs_with_no_forward_pass(raw: Path, tmp_path: Path, monkeypatch):
    _file(tmp_path, RESULTS)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**_params(), "evaluate": {"split": "val", "ap": "coco11"}}))
    out = tmp_path / "out"
    names = ("metrics", "per-class", "pr-curve", "per-image", "results", "details")
    argv = ["evaluate_predictions.py", "--name", "ext", "--raw", str(raw), "--params", str(tmp_path / "params.yaml")]
    for name in names:
        argv += [f"--{name}", str(out / f"{name}.json")]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO / "stages/detection/evaluate_predictions.py"), run_name="__main__")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["forward_passes"] == 0 and metrics["ap"] == "coco11" and metrics["model_lacks"] == ""
    assert json.loads((out / "results.json").read_text()) == RESULTS
