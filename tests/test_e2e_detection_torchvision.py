"""`adapter: torchvision` through the real dvc CLI: a torchvision detector declared in detection/params.yaml alone
runs infer, postprocess, evaluate, grid and robustness, and so does its ONNX export (frozen); a threshold or NMS
change re-runs no forward pass; a COCO results JSON under `predictions:` is scored from params alone."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from evalstack.demo.torchvision_detector import save_demo_detector
from evalstack.detection.layer import open_detections, read_table
from tests.e2e import REPO, deep_update, make_project, run, set_param, stages_run
from tests.test_e2e_detection import _pycocotools

pytestmark = pytest.mark.slow

MODEL = "frcnn320"
N_VAL = 6
ENTRY = {  # the params snippet a user writes (README "Bring your detector")
    "file": "models/frcnn320.pth", "adapter": "torchvision",
    "options": {"builder": "fasterrcnn_mobilenet_v3_large_320_fpn", "num_classes": 4,  # 3 shapes + background
                "device": "cpu"},
    "pipeline": "letterbox128", "labels": "shapes", "task": "detect",
    "trust": True,  # saved here by save_demo_detector (a state_dict is a pickle)
    "candidates": {"min_score": 0.01, "top_k": 500},  # > 150 proposals x 3 classes: none is cut
    "confidence_threshold": 0.05, "nms_iou": 0.5, "max_detections": 100,
}
ONNX_MODEL = "frcnn320_onnx"
ONNX_ENTRY = {  # the same detector exported to ONNX: data, so no trust; its thresholds are constants in the graph
    "file": "models/frcnn320.onnx", "adapter": "torchvision",
    "options": {"frozen_nms": {"confidence_threshold": 0.05, "nms_iou": 0.5, "max_detections": 100}, "device": "cpu"},
    "pipeline": "letterbox128", "labels": "shapes", "task": "detect",
    "candidates": {"min_score": 0.05, "top_k": 100},  # frozen: the cache holds the export's own output
    "confidence_threshold": 0.05, "nms_iou": 0.5, "max_detections": 100,
}
TINY = {
    "synth": {"n_train": 8, "n_val": N_VAL}, "fetch": {"shard_size": 4},
    "grid": {"types": ["jpeg"], "severities": [2]},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("e2e_tv") / "project")
    shutil.copytree(REPO / "detection", root / "detection", symlinks=True,
                    ignore=shutil.ignore_patterns("data", "*.pt2", "tmp", "cache", "config.local"))
    params = deep_update(yaml.safe_load((root / "detection/params.yaml").read_text()), TINY)
    # the torchvision detectors only, and no demo to train: what a user with detectors of their own writes
    params["models"] = {MODEL: ENTRY, ONNX_MODEL: ONNX_ENTRY}
    params["train"] = {}
    (root / "detection/params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    builder, classes = ENTRY["options"]["builder"], ENTRY["options"]["num_classes"]
    save_demo_detector(root / "detection" / ENTRY["file"], builder, classes)
    save_demo_detector(root / "detection" / ONNX_ENTRY["file"], builder, classes, onnx_size=128)
    result = run(root / "detection", "dvc", "repro", "dvc.yaml")
    assert {f"{stage}@{model}" for stage in ("infer", "postprocess", "evaluate", "grid", "robustness")
            for model in (MODEL, ONNX_MODEL)} <= stages_run(result.stdout)
    assert not any(stage.startswith("train") for stage in stages_run(result.stdout))
    assert f"{N_VAL} forward passes" in result.stdout and f"perturbed forward passes this run {N_VAL}" in result.stdout
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "detection repro")
    return root


def test_the_candidates_record_the_opened_postprocessing(project: Path):
    index = json.loads((project / f"detection/data/candidates/{MODEL}/index.json").read_text())
    style = index["stats"]["postprocess"]
    # the 320 model's transform resizes 128-px letterboxes to 320: boxes are cached where its NMS ran
    assert style["style"] == "nms_then_cap" and style["box_map"] == [[320, 320], [128, 128]]
    metrics = json.loads((project / f"detection/metrics/{MODEL}.json").read_text())
    assert metrics["forward_passes"] == N_VAL


def test_a_threshold_and_nms_change_runs_no_forward_pass(project: Path):
    # Both settings in one rerun (two tests, one rerun each, until 2026-12-06; the YOLO test does the same).
    det = project / "detection"
    before = read_table(open_detections(det / f"data/predictions/{MODEL}"))
    set_param(det, f"models.{MODEL}.confidence_threshold", 0.26)
    set_param(det, f"models.{MODEL}.nms_iou", 0.3)
    result = run(det, "dvc", "repro", "dvc.yaml")
    assert stages_run(result.stdout) == {f"{s}@{MODEL}" for s in ("postprocess", "evaluate", "robustness")}
    assert "; 0 forward passes" in result.stdout and f"{N_VAL} images post-processed, 0 forward" in result.stdout
    after = read_table(open_detections(det / f"data/predictions/{MODEL}"))
    # Each change took effect. The threshold: no score left at or below it, where there were some. NMS at 0.3: fewer
    # boxes than the threshold alone keeps, which is `before`'s boxes above it (torchvision drops low scores before
    # its NMS, and a box is suppressed only by a higher-scoring one, so the threshold alone changes nothing else).
    assert (before.scores <= 0.26).any() and (after.scores > 0.26).all()
    assert len(after.scores) < np.count_nonzero(before.scores > 0.26)


def test_the_onnx_export_runs_from_params_with_its_postprocessing_frozen(project: Path):
    det = project / "detection"
    index = json.loads((det / f"data/candidates/{ONNX_MODEL}/index.json").read_text())
    style = index["stats"]["postprocess"]
    assert style["style"] == "frozen" and "ONNX export" in style["reason"]
    assert style["frozen"] == ONNX_ENTRY["options"]["frozen_nms"]
    metrics = json.loads((det / f"metrics/{ONNX_MODEL}.json").read_text())
    assert metrics["forward_passes"] == N_VAL and "mAP" in metrics
    assert (det / f"metrics/robustness/{ONNX_MODEL}.json").exists()


def test_a_results_json_is_scored_from_params_alone(project: Path):
    det = project / "detection"
    annotations = det / "data/source/annotations/instances_val.json"
    truth = json.loads(annotations.read_text())["annotations"]
    rng = np.random.default_rng(0)  # detections computed elsewhere: the ground truth, jittered and scored at random
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.uniform(0.05, 1.0)),
                "bbox": [float(v) for v in np.asarray(a["bbox"]) + rng.normal(0.0, 2.0, 4)]} for a in truth]
    results = [r for r in results if min(r["bbox"][2:]) > 0]
    (det / "results").mkdir(exist_ok=True)
    (det / "results/elsewhere.json").write_text(json.dumps(results))
    set_param(det, "predictions", {"elsewhere": {"file": "results/elsewhere.json"}})
    result = run(det, "dvc", "repro", "dvc.yaml")
    assert stages_run(result.stdout) == {"evaluate_predictions@elsewhere"}  # no model stage reruns
    metrics = json.loads((det / "metrics/elsewhere.json").read_text())
    direct = _pycocotools(annotations, det / "results/elsewhere.json")
    assert 0.0 < direct[0] < 1.0  # a non-trivial mAP
    assert [metrics[name] for name in ("mAP", "mAP50")] == direct[:2] and metrics["AR100"] == direct[8]
