"""The template end to end: the real dvc CLI on a temp copy with tiny data."""
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from tests.e2e import FirstBuild, copy_build, mtimes, output_digests, run, set_param, stages_run

pytestmark = pytest.mark.slow

MODELS = ("tflite_cnn", "torch_cnn", "torch_cnn_onnx", "conc_keras", "pls")
ALL_STAGES = {
    "synth", "fetch", "preprocess@pad_nn", "preprocess@thumb64", "preprocess@pad_regions",
    "train@tflite_cnn", "train@torch_cnn", "train@conc_keras", "fit_pls", "export_onnx@torch_cnn_onnx",
    *(f"infer@{m}" for m in MODELS), "evaluate", "compare",
    *(f"robustness@{m}" for m in MODELS), "robustness_report",
}
# Measurements differ run to run by nature; everything else (the comparison too) must be byte-identical.
MEASURED = {f"data/latency/{m}.json" for m in MODELS}


# What a first `dvc repro` leaves for the user to commit (README "What you see"); the template
# ships the .gitignore entries DVC would otherwise append, so nothing else shows up.
TO_COMMIT = {"?? dvc.lock", "?? metrics/", "?? robustness/models/"}


@pytest.fixture(scope="module")
def first_run(tiny_first_build: FirstBuild, tmp_path_factory) -> FirstBuild:
    """The session's first `dvc repro` of the tiny default (test_e2e_share starts from it too), copied."""
    assert tiny_first_build.stages_run == ALL_STAGES
    return dataclasses.replace(tiny_first_build,
                               root=copy_build(tiny_first_build, tmp_path_factory.mktemp("e2e") / "project"))


@pytest.fixture(scope="module")
def project(first_run: FirstBuild) -> Path:
    return first_run.root


def test_repro_produces_metrics_for_every_model(project: Path):
    for model in ("tflite_cnn", "torch_cnn", "torch_cnn_onnx"):
        headline = json.loads((project / f"metrics/{model}.json").read_text())
        assert list(headline) == [model] and list(headline[model]) == ["accuracy"]  # one headline per model
        details = json.loads((project / f"data/evaluation/{model}.json").read_text())
        assert 0 <= details["accuracy"] == headline[model]["accuracy"] <= 1  # tiny data: real figures from `make repro`
        assert details["n_items"] > 0
        assert details["forward_passes"] == 60  # every item once, dev and test
        assert (project / f"plots/classify/pairs/{model}.csv").read_text().startswith("actual,predicted\n")
    assert set(json.loads((project / "metrics/pls.json").read_text())["pls"]) == {"rmse"}
    shown = run(project, "dvc", "metrics", "show", "--json").stdout
    assert "tflite_cnn.json" in shown and "accuracy" in shown


def test_first_run_leaves_only_what_a_user_commits_and_a_clean_status(first_run: FirstBuild):
    assert first_run.git_status == TO_COMMIT
    assert run(first_run.root, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."


def test_first_screen_and_dvc_tables_fit_their_terminals(project: Path):
    run(project, "python", "-m", "evalstack.cli", "report")
    assert (project / "reports/index.html").is_file() and (project / "reports/index.md").is_file()
    summary = run(project, "python", "-m", "evalstack.cli", "summary").stdout
    assert max(len(line) for line in summary.splitlines()) <= 100 and len(summary.splitlines()) <= 20
    assert all(model in summary for model in MODELS) and "Full report: reports/index.html" in summary
    assert run(project, "git", "status", "--porcelain").stdout == ""  # the report is regenerated, not committed
    # DVC leaves out a headline without a value (tiny data: pls may score no card)
    scored = [m for m in MODELS if None not in json.loads((project / f"metrics/{m}.json").read_text())[m].values()]
    assert {"tflite_cnn", "torch_cnn", "conc_keras"} <= set(scored)
    for command in (("metrics", "show"), ("metrics", "diff", "--all", "HEAD")):
        shown = run(project, "dvc", *command, env_columns=160)
        lines = shown.stdout.splitlines()
        assert "WARNING" not in shown.stdout + shown.stderr and "failed to load" not in shown.stdout + shown.stderr
        assert max(len(line) for line in lines) <= 160 and "…" not in shown.stdout, shown.stdout
        assert all(model in shown.stdout for model in scored), shown.stdout


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
    lock = yaml.safe_load(text)
    for stage in lock["stages"].values():
        for side in ("deps", "outs"):
            stage[side] = [entry for entry in stage.get(side, []) if entry["path"] not in MEASURED]
    return lock


def test_evaluate_param_reruns_only_evaluate(project: Path):
    set_param(project, "evaluate.split", "dev")
    result = run(project, "dvc", "repro")
    assert stages_run(result.stdout) == {"evaluate", "compare"}
    assert "evaluated 5 of 5 models; 0 written from the store" in result.stdout
    run(project, "git", "checkout", "params.yaml")
    restored = run(project, "dvc", "repro")  # back to the committed state
    assert stages_run(restored.stdout) == set()  # evaluate and report come from the run-cache
    assert "Stage 'evaluate' is cached" in restored.stdout


def test_pipeline_param_reruns_only_that_pipelines_models(project: Path):
    set_param(project, "preprocess.pipelines.thumb64.resample", "bicubic")
    result = run(project, "dvc", "repro")
    # the reports rerun only if the metrics, plots or grid summaries came out different
    assert stages_run(result.stdout) - {"report", "robustness_report"} == {
        "preprocess@thumb64", "train@torch_cnn", "export_onnx@torch_cnn_onnx", "infer@torch_cnn",
        "infer@torch_cnn_onnx", "evaluate", "compare", "robustness@torch_cnn", "robustness@torch_cnn_onnx",
    }
    # one evaluate stage for all models: the three whose predictions did not change come from the store
    assert "evaluated 2 of 5 models; 3 written from the store" in result.stdout
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
