"""A YOLO-layout model and its ONNX export through the detection project from params alone (real dvc CLI,
tiny data): both run infer, the grid and the metrics; their candidates agree; a confidence_threshold /
nms_iou change runs 0 forward passes, counted from the layers' build records."""
import json
from pathlib import Path

import pytest
import yaml

from evalstack.core.layers import Layer
from evalstack.demo.yolo_layout import export_yolo_layout
from evalstack.detection.candidates import read_candidates_shard_checked
from tests.detection_helpers import assert_same_candidates
from tests.e2e import build_record, make_detection_project, run, stages_run

pytestmark = pytest.mark.slow

N_VAL = 12
MODELS = ("yolo_tiny", "yolo_tiny_onnx")
PIPELINE = {"kind": "letterbox", "resize": 64, "fill": 114, "resample": "opencv_linear", "stride": 32}


def _entry(file: str) -> dict:
    entry = {"file": file, "adapter": "yolo", "pipeline": "yolo64", "labels": "shapes", "task": "detect",
             "candidates": {"min_score": 0.001, "top_k": 100},
             "confidence_threshold": 0.25, "nms_iou": 0.7, "max_detections": 100, "options": {}}
    return entry | ({"trust": True} if file.endswith(".pt2") else {})  # a .pt2 can run code; we built it


TINY = {
    "synth": {"n_train": 24, "n_val": N_VAL},
    "fetch": {"shard_size": 16},
    "grid": {"types": ["gaussian_noise", "jpeg"], "severities": [1, 2]},
}


def _candidate_layers(det: Path) -> list[str]:
    return [f"detection/data/candidates/{m}" for m in MODELS] + \
        [f"detection/data/grid/{m}/{kind}-{s}" for m in MODELS for kind in ("gaussian_noise", "jpeg") for s in (1, 2)]


def _records(root: Path) -> dict[str, dict]:
    return {layer: build_record(root, layer) for layer in _candidate_layers(root / "detection")}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_detection_project(tmp_path_factory.mktemp("e2e_yolo") / "project", {**TINY, "preprocess": {
        "pipelines": {"yolo64": PIPELINE}}})
    params = yaml.safe_load((root / "detection/params.yaml").read_text())
    params["models"] = {"yolo_tiny": _entry("models/yolo_tiny.pt2"), "yolo_tiny_onnx": _entry("models/yolo_tiny.onnx")}
    params["train"] = {}  # no demo detector to train: the user's own files only
    params["preprocess"]["pipelines"] = {"yolo64": PIPELINE}  # and no pipeline only the demo's training read
    (root / "detection/params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    export_yolo_layout(root / "detection/models/yolo_tiny.pt2", n_classes=3, size=64, seed=0)  # + yolo_tiny.onnx
    result = run(root / "detection", "dvc", "repro")
    per_model = ("infer", "postprocess", "evaluate", "grid", "robustness")
    assert {f"{stage}@{m}" for stage in per_model for m in MODELS} <= stages_run(result.stdout)
    assert not any(stage.startswith("train") for stage in stages_run(result.stdout))
    return root


def test_both_files_run_from_params_and_give_the_same_candidates(project: Path):
    det = project / "detection"
    records = _records(project)
    forward = {layer: record["counts"]["forward_passes"] for layer, record in records.items()}
    assert set(forward.values()) == {N_VAL}  # clean once per model, then once per cell: 2 × (12 + 4 · 12)
    tables = {}
    for model in MODELS:
        layer = Layer.open(det / f"data/candidates/{model}")
        stats = layer.index.stats
        assert stats["postprocess"]["style"] == "nms_then_cap" and stats["postprocess"]["frozen"] is None
        assert layer.key.parts["model"]["output"] == "raw"
        tables[model] = [read_candidates_shard_checked(layer, shard) for shard in layer.shards]
        metrics = json.loads((det / f"metrics/{model}.json").read_text())
        assert "mAP" in json.dumps(metrics)
    rows = [[table.candidates(row) for table in found for row in range(len(table))] for found in tables.values()]
    assert len(rows[0]) == len(rows[1]) == N_VAL and sum(map(len, rows[0])) == N_VAL * 84  # 64 px: 84 anchors
    for a, b in zip(*rows):
        assert_same_candidates(a, b, atol=1e-4)


def test_a_threshold_and_nms_change_runs_no_forward_pass(project: Path):
    det = project / "detection"
    before = _records(project)
    params = yaml.safe_load((det / "params.yaml").read_text())
    for model in MODELS:
        params["models"][model].update(confidence_threshold=0.4, nms_iou=0.5, max_detections=20)
    (det / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(det, "dvc", "repro")
    assert stages_run(result.stdout) == {f"{stage}@{m}" for stage in ("postprocess", "evaluate", "robustness")
                                         for m in MODELS}
    after = _records(project)
    passes = sum(record["counts"]["forward_passes"] for layer, record in after.items() if record != before[layer])
    assert passes == 0 and after == before  # no candidates layer was built again
    for model in MODELS:
        record = build_record(project, f"detection/data/predictions/{model}")
        assert record["counts"]["items_computed"] == N_VAL  # post-processed again, from the cache
