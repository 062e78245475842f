"""The template end to end: the real dvc CLI on a temp copy with tiny data."""
import json
from pathlib import Path

import pytest

from tests.e2e import make_project, mtimes, output_digests, run, set_param, stages_run

pytestmark = pytest.mark.slow

ALL_STAGES = {
    "synth", "fetch", "preprocess@pad_nn", "preprocess@thumb64", "train@tflite_cnn", "train@torch_cnn",
    "infer@tflite_cnn", "infer@torch_cnn", "evaluate@tflite_cnn", "evaluate@torch_cnn",
    "robustness@tflite_cnn", "robustness@torch_cnn", "robustness_report",
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
    for model in ("tflite_cnn", "torch_cnn"):
        metrics = json.loads((project / f"metrics/{model}.json").read_text())
        assert 0 <= metrics["accuracy"] <= 1  # tiny data: the real figures come from `make repro`
        assert metrics["n_items"] > 0
        assert metrics["forward_passes"] == 60  # every item once, dev and test
        assert (project / f"plots/confusion/{model}.csv").read_text().startswith("actual,predicted\n")
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
    assert output_digests(project) == before
    assert run(project, "git", "status", "--porcelain").stdout == ""


def test_evaluate_param_reruns_only_evaluate(project: Path):
    set_param(project, "evaluate.split", "dev")
    result = run(project, "dvc", "repro")
    assert stages_run(result.stdout) == {"evaluate@tflite_cnn", "evaluate@torch_cnn"}
    run(project, "git", "checkout", "params.yaml")
    run(project, "dvc", "repro")  # back to the committed state (restored from the run-cache)


def test_pipeline_param_reruns_only_that_pipelines_models(project: Path):
    set_param(project, "preprocess.pipelines.thumb64.resample", "bicubic")
    result = run(project, "dvc", "repro")
    # robustness_report reruns only when the grid's summary changed (the same predictions need not change it)
    assert stages_run(result.stdout) - {"robustness_report"} == {
        "preprocess@thumb64", "train@torch_cnn", "infer@torch_cnn", "evaluate@torch_cnn", "robustness@torch_cnn",
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
