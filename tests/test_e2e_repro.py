"""The template end to end: the real dvc CLI on a temp copy with tiny data."""
import json
from pathlib import Path

import pytest
import yaml

from tests.e2e import make_project, mtimes, output_digests, run, set_param, stages_run

pytestmark = pytest.mark.slow

MODELS = ("tflite_cnn", "torch_cnn", "torch_cnn_onnx", "conc_keras", "pls")
ALL_STAGES = {
    "synth", "fetch", "preprocess@pad_nn", "preprocess@thumb64", "preprocess@pad_regions",
    "train@tflite_cnn", "train@torch_cnn", "train@conc_keras", "fit_pls", "export_onnx@torch_cnn_onnx",
    *(f"infer@{m}" for m in MODELS), *(f"evaluate@{m}" for m in MODELS), "compare",
    *(f"robustness@{m}" for m in MODELS), "robustness_report",
}
# Measurements differ run to run by nature; everything else must be byte-identical.
MEASURED = {
    *(f"data/latency/{m}.json" for m in MODELS), "comparison/summary.csv",  # the comparison tabulates latency
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("e2e") / "project")
    result = run(root, "dvc", "repro")
    assert stages_run(result.stdout) == ALL_STAGES
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "first repro")
    return root


def test_repro_produces_metrics_for_every_model(project: Path):
    for model in ("tflite_cnn", "torch_cnn", "torch_cnn_onnx"):
        metrics = json.loads((project / f"metrics/{model}.json").read_text())
        assert 0 <= metrics["accuracy"] <= 1  # tiny data: the real figures come from `make repro`
        assert metrics["n_items"] > 0
        assert metrics["forward_passes"] == 60  # every item once, dev and test
        assert (project / f"plots/classify/pairs/{model}.csv").read_text().startswith("actual,predicted\n")
    shown = run(project, "dvc", "metrics", "show", "--json").stdout
    assert "tflite_cnn.json" in shown and "accuracy" in shown


def test_second_repro_is_a_no_op_that_touches_nothing(project: Path):
    before = mtimes(project)
    result = run(project, "dvc", "repro")
    assert stages_run(result.stdout) == set()
    assert "up to date" in result.stdout
    assert mtimes(project) == before


def test_forced_repro_is_byte_identical(project: Path):
    before = output_digests(project)
    assert any(name.endswith(".h5") for name in before)
    result = run(project, "dvc", "repro", "-f")
    assert stages_run(result.stdout) == ALL_STAGES
    after = output_digests(project)
    assert {name for name in before if before[name] != after.get(name)} <= MEASURED
    assert set(after) == set(before)
    changed = {line[3:] for line in run(project, "git", "status", "--porcelain").stdout.splitlines()}
    assert changed <= MEASURED | {"dvc.lock"}
    committed = run(project, "git", "show", "HEAD:dvc.lock").stdout
    assert _lock_without_measured(committed) == _lock_without_measured((project / "dvc.lock").read_text())
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "forced repro: new latency measurements")


def _lock_without_measured(text: str) -> dict:
    # compare reads the latency folder
    measured = MEASURED | {"comparison", "data/latency"}
    lock = yaml.safe_load(text)
    for stage in lock["stages"].values():
        for side in ("deps", "outs"):
            stage[side] = [entry for entry in stage.get(side, []) if entry["path"] not in measured]
    return lock


def test_evaluate_param_reruns_only_evaluate(project: Path):
    set_param(project, "evaluate.split", "dev")
    result = run(project, "dvc", "repro")
    assert stages_run(result.stdout) == {*(f"evaluate@{m}" for m in MODELS), "compare"}
    run(project, "git", "checkout", "params.yaml")
    restored = run(project, "dvc", "repro")  # back to the committed state
    assert stages_run(restored.stdout) == set()  # evaluate and report come from the run-cache
    assert "Stage 'evaluate@tflite_cnn' is cached" in restored.stdout


def test_pipeline_param_reruns_only_that_pipelines_models(project: Path):
    set_param(project, "preprocess.pipelines.thumb64.resample", "bicubic")
    result = run(project, "dvc", "repro")
    # the reports rerun only if the metrics, plots or grid summaries came out different
    assert stages_run(result.stdout) - {"report", "robustness_report"} == {
        "preprocess@thumb64", "train@torch_cnn", "export_onnx@torch_cnn_onnx", "infer@torch_cnn",
        "infer@torch_cnn_onnx", "evaluate@torch_cnn", "evaluate@torch_cnn_onnx", "compare",
        "robustness@torch_cnn", "robustness@torch_cnn_onnx",
    }
    run(project, "git", "checkout", "params.yaml")
    restored = run(project, "dvc", "repro")
    assert "pad_nn" not in " ".join(stages_run(restored.stdout))


def test_experiments_show_and_diff_metrics(project: Path):
    run(project, "dvc", "exp", "run", "-S", "evaluate.split=dev", "-n", "on-dev")
    shown = json.loads(run(project, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "on-dev" in text and "accuracy" in text
    diff = run(project, "dvc", "metrics", "diff", "--json", "HEAD").stdout
    assert isinstance(json.loads(diff), dict)
