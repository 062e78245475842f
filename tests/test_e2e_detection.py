"""The detection profile end to end: the real dvc CLI on a temp copy of the template with tiny data.

One project is built once (train 1 epoch on 24 images, 12 val images, a 2×2 corruption grid) and
the tests run in order on it: figures against pycocotools, no-op and forced reruns, a damaged
shard and its repair, a post-processing change (0 forward passes, equal to a fresh run) and a
grown grid (only the new cells compute)."""
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import h5py
import pytest
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from evalstack.detection.layer import open_detections, read_table
from evalstack.detection.perceptionmetrics import CacheReader, compute_model_hash, is_cache_valid
from evalstack.reporting.report import write_report
from tests.e2e import make_detection_project, run, set_param, stages_run

pytestmark = pytest.mark.slow

PROFILE = "dvc.yaml"  # run inside detection/: the detection profile is its own DVC project
MODEL = "shapes_centernet"
PER_MODEL = ("infer", "postprocess", "evaluate", "grid", "robustness")
STAGES = {name for name in (  # run inside detection/, dvc names stages without the file
    "synth", "fetch", "preprocess@letterbox128", "train@shapes_centernet",
    *(f"{stage}@{MODEL}" for stage in PER_MODEL),
)}
N_VAL = 12
TINY = {
    "synth": {"n_train": 24, "n_val": N_VAL},
    "fetch": {"shard_size": 16},
    "train": {MODEL: {"epochs": 1}},  # tiny data: no accuracy claim (the README figure is the full run)
    "grid": {"types": ["gaussian_noise", "jpeg"], "severities": [1, 3]},  # 2 × 2 cells
}


def staged(*names: str) -> set[str]:
    return {f"{name}@{MODEL}" for name in names}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_detection_project(tmp_path_factory.mktemp("e2e_det") / "project", TINY)
    result = run(root / "detection", "dvc", "repro", PROFILE)
    assert stages_run(result.stdout) == STAGES
    assert f"clean forward passes {N_VAL} (by infer, once), perturbed forward passes this run {N_VAL * 4}" in result.stdout
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
    metrics = json.loads((det / f"metrics/{MODEL}.json").read_text())
    details = json.loads((det / f"reports/coco/{MODEL}.json").read_text())
    direct = _pycocotools(det / "data/source/annotations/instances_val.json", det / f"data/results/{MODEL}.json")
    assert [metrics[name] for name in ("mAP", "mAP50")] == direct[:2] and metrics["AR100"] == direct[8]
    assert details["mAP75"] == direct[2]
    assert metrics["forward_passes"] == N_VAL  # only the split that is evaluated: training needs no predictions
    assert details["forward_passes_by_split"] == {"val": N_VAL}
    shown = run(det, "dvc", "metrics", "show", "--json").stdout  # the detection project's own metrics
    assert "metrics/shapes_centernet.json" in shown and "mAP50" in shown
    # The classification project has not run here: its own metrics files are missing (DVC says so),
    # and nothing of the detection project is listed or asked for.
    root = run(project, "dvc", "metrics", "show")
    assert "detection" not in root.stdout + root.stderr
    assert "detection" not in run(project, "dvc", "status").stdout  # only its own (not yet run) stages


def test_metrics_stay_readable_and_the_report_has_the_grid(project: Path):
    det = project / "detection"
    robustness = json.loads((det / f"metrics/robustness/{MODEL}.json").read_text())
    assert sorted(robustness) == ["forward_passes", "mPC", "rPC"] and robustness["forward_passes"] == N_VAL * 4
    details = json.loads((det / f"reports/robustness/{MODEL}.json").read_text())
    assert details["counts"]["clean_forward_passes"] == N_VAL and len(details["cells"]) == 4
    assert details["mPC"] == robustness["mPC"] and details["P_clean"] == json.loads(
        (det / f"metrics/{MODEL}.json").read_text())["mAP"]  # P_clean is the clean evaluation's mAP, exactly
    shown = run(det, "dvc", "metrics", "show").stdout.splitlines()
    assert len(shown) == 3 and max(map(len, shown)) <= 120, shown  # header + one row per file, fits a terminal
    write_report(project)  # `evalstack report`: both profiles' results, here the detection one
    report = (project / "reports/index.md").read_text()
    assert "Under corruptions (COCO-C protocol)" in report and "mAP vs severity: jpeg (all detectors)" in report
    assert (project / "reports/figures/detection_grid_gaussian_noise.png").stat().st_size > 0
    assert report.count(f"| {MODEL} |") >= 3  # the detection table, the grid summary, the per-type rows
    assert {p.name for p in (det / f"plots/robustness/{MODEL}").iterdir()} == {"gaussian_noise.csv", "jpeg.csv"}


def test_every_image_has_a_row_and_zero_gt_images_are_counted(project: Path):
    det = project / "detection"
    source = json.loads((det / "data/source/annotations/instances_val.json").read_text())
    without_gt = {i["id"] for i in source["images"]} - {a["image_id"] for a in source["annotations"]}
    rows = (det / f"reports/per_image/{MODEL}.csv").read_text().splitlines()[1:]
    assert len(rows) == N_VAL
    assert {int(r.split(",")[0]) for r in rows if r.split(",")[2] == "0"} == without_gt and without_gt
    details = json.loads((det / f"reports/coco/{MODEL}.json").read_text())
    assert details["n_images_without_gt"] == len(without_gt)
    assert details["fn"] + details["tp"] == sum(1 for a in source["annotations"] if not a["iscrowd"])
    model_hash = compute_model_hash(file_path=det / f"models/{MODEL}.pt2")
    reader = CacheReader(det / f"data/predictions/{MODEL}", model_hash, tensors=det / "data/preprocessed/letterbox128")
    assert len(reader) == N_VAL and reader.read_tensor(reader.image_ids()[0]).shape == (3, 128, 128)
    cell = det / f"data/grid_predictions/{MODEL}/jpeg-3"
    assert is_cache_valid(cell, model_hash) and CacheReader(cell, model_hash).metadata()["perturbation"]["severity"] == 3


def test_second_repro_is_a_no_op(project: Path):
    result = run(project / "detection", "dvc", "repro", PROFILE)
    assert stages_run(result.stdout) == set()


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for top in ("data", "models", "metrics", "plots", "reports") for p in sorted((root / top).rglob("*"))
            if p.is_file()}


def test_forced_repro_is_byte_identical(project: Path):
    before = _digests(project / "detection")
    assert any(name.endswith(".pt2") for name in before) and any(name.endswith(".h5") for name in before)
    result = run(project / "detection", "dvc", "repro", "-f", PROFILE)
    assert stages_run(result.stdout) == STAGES
    # Every layer comes back from the shard store: nothing is recomputed, no model runs.
    assert "; 0 forward passes (layer: val 12)" in result.stdout  # infer
    assert "perturbed forward passes this run 0" in result.stdout  # grid
    assert "0 images post-processed, 0 forward passes" in result.stdout  # robustness
    assert _digests(project / "detection") == before
    assert run(project, "git", "status", "--porcelain").stdout == ""


def test_an_experiment_runs_and_shows_inside_the_detection_project(project: Path):
    det = project / "detection"
    ran = run(det, "dvc", "exp", "run", "-S", "models.shapes_centernet.nms_iou=0.6", "-n", "nms-06")
    assert stages_run(ran.stdout) == staged("postprocess", "evaluate", "robustness")  # no forward pass
    shown = run(det, "dvc", "exp", "show", "--only-changed", "--no-pager", env_columns=160).stdout
    assert "nms-06" in shown and "0.6" in shown, shown
    run(project, "git", "checkout", "--", ".")  # back to the committed state
    run(det, "dvc", "checkout", "--force")
    assert stages_run(run(det, "dvc", "repro", PROFILE).stdout) == set()


def _flip_a_box_bit(path: Path) -> None:
    """One bit of the first box, in place, with the file's mtime put back (as bit rot leaves it)."""
    status = os.stat(path)
    with h5py.File(path, "r") as handle:
        offset = handle["bboxes"].id.get_offset()
    with open(path, "r+b") as handle:
        handle.seek(offset + 1)
        byte = handle.read(1)
        handle.seek(offset + 1)
        handle.write(bytes([byte[0] ^ 0x10]))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def test_a_flipped_bit_in_a_predictions_shard_fails_evaluate_with_a_repair_that_works(project: Path):
    det = project / "detection"
    layer = f"data/predictions/{MODEL}"
    shard = next(s for s in open_detections(det / layer).shards if s.n_items)
    _flip_a_box_bit(det / layer / shard.name)
    stage = yaml.safe_load((det / "dvc.yaml").read_text())["stages"]["evaluate"]["do"]["cmd"]
    command = " ".join(stage.replace("${key}", MODEL).split())
    failed = run(det, "sh", "-c", command, check=False)
    assert failed.returncode != 0
    # The file is named: by its per-image checksums, or by its sha256 when the file's hash is not remembered
    # (after a checkout gave it a new inode, as the experiment test's does) …
    assert (f"{layer}/{shard.name}: the data of 1 image(s)" in failed.stderr
            or f"{layer}/{shard.name} does not match the sha256" in failed.stderr), failed.stderr
    verified = run(det, sys.executable, "-m", "evalstack.cli", "verify", layer, check=False).stdout
    assert f"{layer}/{shard.name}: item 0 (id " in verified and "does not match its checksum" in verified  # … and the image
    assert f"dvc checkout --relink --force {layer}" in failed.stderr
    run(det, "dvc", "checkout", layer)  # plain checkout: DVC trusts its stat cache, nothing changes
    assert run(det, "sh", "-c", command, check=False).returncode != 0
    run(det, "dvc", "checkout", "--relink", "--force", layer)  # the advised repair
    run(det, "sh", "-c", command)
    assert run(project, "git", "status", "--porcelain").stdout == ""


def test_a_postprocessing_change_runs_no_model_and_equals_a_fresh_run(project: Path, tmp_path: Path):
    det = project / "detection"
    set_param(det, f"models.{MODEL}.nms_iou", 0.3)
    set_param(det, f"models.{MODEL}.confidence_threshold", 0.2)
    result = run(project / "detection", "dvc", "repro", PROFILE)
    assert stages_run(result.stdout) == staged("postprocess", "evaluate", "robustness")  # no infer, no grid
    assert "forward passes this run" not in result.stdout and f"{N_VAL * 4} images post-processed, 0 forward" in result.stdout
    # From scratch at the new values, in a fresh process (as a stage runs), without any store: the same bytes.
    # The script is copied out of this checkout: a script runs the evalstack of the checkout it sits in
    # (evalstack/__init__.py), and this one must run the project's own copy, as its stages do.
    script = Path(shutil.copy(Path(__file__).parent / "fresh_detection.py", tmp_path / "fresh_detection.py"))
    run(det, sys.executable, str(script), str(det), MODEL, str(tmp_path / "fresh"))
    same = lambda a, b: {p.name: p.read_bytes() for p in a.rglob("*.h5")} == {p.name: p.read_bytes() for p in b.rglob("*.h5")}  # noqa: E731
    assert same(tmp_path / "fresh/det", det / f"data/predictions/{MODEL}")
    assert same(tmp_path / "fresh/gridpp", det / f"data/grid_predictions/{MODEL}")
    assert json.loads((tmp_path / "fresh/summary.json").read_text()) == \
        json.loads((det / f"reports/robustness/{MODEL}.json").read_text())
    table = read_table(open_detections(det / f"data/predictions/{MODEL}"))
    assert (table.scores >= 0.2).all()


def test_a_new_corruption_type_computes_only_its_cells(project: Path):
    det = project / "detection"
    set_param(det, "grid.types", ["gaussian_noise", "jpeg", "fog"])
    result = run(project / "detection", "dvc", "repro", PROFILE)
    assert stages_run(result.stdout) == staged("grid", "robustness")
    assert f"perturbed forward passes this run {N_VAL * 2}" in result.stdout  # fog-1 and fog-3 only
    assert "4 cells (2 with shards computed)" not in result.stdout and "6 cells (2 with shards computed)" in result.stdout
    details = json.loads((det / f"reports/robustness/{MODEL}.json").read_text())
    assert details["counts"]["perturbed_forward_passes"] == N_VAL * 6 and len(details["types"]) == 3
    # Last test of the module: the project is left with these params.
