"""`adapter: torchvision` through the real dvc CLI: a torchvision detector declared in detection/params.yaml alone
runs infer, postprocess, evaluate, grid and robustness; a threshold or NMS change re-runs no forward pass."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from evalstack.demo.torchvision_detector import save_demo_detector
from evalstack.detection.layer import open_detections, read_table
from tests.e2e import REPO, deep_update, make_project, run, set_param, stages_run

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
TINY = {
    "synth": {"n_train": 8, "n_val": N_VAL}, "fetch": {"shard_size": 4},
    "train": {"shapes_centernet": {"epochs": 1}},
    "grid": {"types": ["jpeg"], "severities": [2]},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("e2e_tv") / "project")
    shutil.copytree(REPO / "detection", root / "detection", symlinks=True,
                    ignore=shutil.ignore_patterns("data", "*.pt2", "tmp", "cache", "config.local"))
    params = deep_update(yaml.safe_load((root / "detection/params.yaml").read_text()), TINY)
    params["models"] = {MODEL: ENTRY}  # the torchvision detector only (the demo one still trains: train: is its own)
    (root / "detection/params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    save_demo_detector(root / "detection" / ENTRY["file"], ENTRY["options"]["builder"], ENTRY["options"]["num_classes"])
    result = run(root / "detection", "dvc", "repro", "dvc.yaml")
    assert {f"{stage}@{MODEL}" for stage in ("infer", "postprocess", "evaluate", "grid", "robustness")} <= \
        stages_run(result.stdout)
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


@pytest.mark.parametrize("name,value", [("confidence_threshold", 0.26), ("nms_iou", 0.3)])
def test_a_threshold_or_nms_change_runs_no_forward_pass(project: Path, name: str, value: float):
    det = project / "detection"
    before = read_table(open_detections(det / f"data/predictions/{MODEL}"))
    set_param(det, f"models.{MODEL}.{name}", value)
    result = run(det, "dvc", "repro", "dvc.yaml")
    assert stages_run(result.stdout) == {f"{s}@{MODEL}" for s in ("postprocess", "evaluate", "robustness")}
    assert "; 0 forward passes" in result.stdout and f"{N_VAL} images post-processed, 0 forward" in result.stdout
    after = read_table(open_detections(det / f"data/predictions/{MODEL}"))
    assert len(after.scores) < len(before.scores)  # the change took effect
