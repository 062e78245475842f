"""The detection profile end to end: the real dvc CLI on a temp copy of the template with tiny data."""
import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from evalstack.detection.layer import open_detections, read_table
from evalstack.detection.perceptionmetrics import CacheReader, compute_model_hash
from tests.e2e import REPO, deep_update, make_project, output_digests, run, set_param, stages_run

pytestmark = pytest.mark.slow

PROFILE = "dvc.yaml"  # run inside detection/: the detection profile is its own DVC project
STAGES = {"synth", "fetch", "preprocess@letterbox128", "train@shapes_centernet", "infer@shapes_centernet",
          "evaluate@shapes_centernet"}
TINY = {
    "synth": {"n_train": 24, "n_val": 12},
    "fetch": {"shard_size": 16},
    "train": {"shapes_centernet": {"epochs": 1}},  # tiny data: no accuracy claim (the README figure is the full run)
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("e2e_det") / "project")
    shutil.copytree(REPO / "detection", root / "detection", symlinks=True,  # detection/src → ../src
                    ignore=shutil.ignore_patterns("data", "*.pt2", "tmp", "cache", "config.local"))
    params = deep_update(yaml.safe_load((root / "detection/params.yaml").read_text()), TINY)
    (root / "detection/params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(root / "detection", "dvc", "repro", PROFILE)
    assert stages_run(result.stdout) == STAGES
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "detection repro")
    return root


def _pycocotools(annotations: Path, results: Path) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        evaluator = COCOeval(gt, gt.loadRes(str(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def test_stage_map_equals_pycocotools_on_the_same_json(project: Path):
    det = project / "detection"
    metrics = json.loads((det / "metrics/shapes_centernet.json").read_text())
    direct = _pycocotools(det / "data/source/annotations/instances_val.json", det / "data/results/shapes_centernet.json")
    assert [metrics[name] for name in ("mAP", "mAP50", "mAP75")] == direct[:3]
    assert metrics["AR100"] == direct[8]
    assert metrics["forward_passes"] == 24 + 12  # every image once, train and val
    shown = run(det, "dvc", "metrics", "show", "--json").stdout  # the detection project's own metrics
    assert "metrics/shapes_centernet.json" in shown and "mAP50" in shown
    # The classification project has not run here: its own metrics files are missing (DVC says so),
    # and nothing of the detection project is listed or asked for.
    root = run(project, "dvc", "metrics", "show")
    assert "detection" not in root.stdout + root.stderr
    assert "detection" not in run(project, "dvc", "status").stdout  # only its own (not yet run) stages


def test_every_image_has_a_row_and_zero_gt_images_are_counted(project: Path):
    det = project / "detection"
    source = json.loads((det / "data/source/annotations/instances_val.json").read_text())
    without_gt = {i["id"] for i in source["images"]} - {a["image_id"] for a in source["annotations"]}
    rows = (det / "reports/per_image/shapes_centernet.csv").read_text().splitlines()[1:]
    assert len(rows) == 12
    assert {int(r.split(",")[0]) for r in rows if r.split(",")[2] == "0"} == without_gt and without_gt
    metrics = json.loads((det / "metrics/shapes_centernet.json").read_text())
    assert metrics["n_images_without_gt"] == len(without_gt)
    assert metrics["fn"] + metrics["tp"] == sum(1 for a in source["annotations"] if not a["iscrowd"])
    model_hash = compute_model_hash(file_path=det / "models/shapes_centernet.pt2")
    reader = CacheReader(det / "data/predictions/shapes_centernet", model_hash, tensors=det / "data/preprocessed/letterbox128")
    assert len(reader) == 36 and reader.read_tensor(reader.image_ids()[0]).shape == (3, 128, 128)


def test_second_repro_is_a_no_op(project: Path):
    result = run(project / "detection", "dvc", "repro", PROFILE)
    assert stages_run(result.stdout) == set()


def test_forced_repro_is_byte_identical(project: Path):
    before = output_digests(project / "detection")
    assert any(name.endswith(".pt2") for name in before) and any(name.endswith(".h5") for name in before)
    result = run(project / "detection", "dvc", "repro", "-f", PROFILE)
    assert stages_run(result.stdout) == STAGES
    # Letterboxed and detection shards come back from the shard store: nothing is recomputed.
    assert result.stdout.count("computed 0 (0 items), reused 3 from the store") == 2
    assert "0 forward passes" in result.stdout
    assert output_digests(project / "detection") == before
    assert run(project, "git", "status", "--porcelain").stdout == ""


def test_an_experiment_runs_and_shows_inside_the_detection_project(project: Path):
    det = project / "detection"
    ran = run(det, "dvc", "exp", "run", "-S", "models.shapes_centernet.nms_iou=0.6", "-n", "nms-06")
    assert stages_run(ran.stdout) == {"infer@shapes_centernet", "evaluate@shapes_centernet"}
    shown = run(det, "dvc", "exp", "show", "--only-changed", "--no-pager", env_columns=160).stdout
    assert "nms-06" in shown and "0.6" in shown, shown
    run(project, "git", "checkout", "--", ".")  # back to the committed state
    run(det, "dvc", "checkout", "--force")
    assert stages_run(run(det, "dvc", "repro", PROFILE).stdout) == set()


def test_threshold_is_part_of_the_predictions_key_and_empty_images_round_trip(project: Path):
    det = project / "detection"
    set_param(det, "models.shapes_centernet.confidence_threshold", 0.999)
    result = run(project / "detection", "dvc", "repro", PROFILE)
    assert stages_run(result.stdout) == {"infer@shapes_centernet", "evaluate@shapes_centernet"}
    table = read_table(open_detections(det / "data/predictions/shapes_centernet"))
    assert len(table) == 36 and table.counts.sum() == 0 and table.bboxes.shape == (0, 4)
    metrics = json.loads((det / "metrics/shapes_centernet.json").read_text())
    assert metrics["mAP"] == 0.0 and metrics["n_images_without_detections"] == 12 and metrics["tp"] == 0
    # Last test of the module: the project is left with the changed threshold.
