"""The robustness grid under the real dvc CLI: counts of passes, growth of the grid, determinism."""
import hashlib
import json
import sys
from pathlib import Path

import pytest

from tests.e2e import build_record, make_project, run, set_param, stages_run, use_own_models

pytestmark = pytest.mark.slow

MODELS = ("tflite_cnn", "torch_cnn")
PIPELINES = ("pad_nn", "thumb64")
TYPES, SEVERITIES = ["gaussian_noise", "contrast"], [1, 2]
GRID = {"types": TYPES, "severities": SEVERITIES}
ROBUSTNESS_STAGES = {"robustness@tflite_cnn", "robustness@torch_cnn", "robustness_report"}
GRID_CHANGE_RERUNS = ROBUSTNESS_STAGES


def summary(root: Path, model: str) -> dict:
    return json.loads((root / f"robustness/models/{model}.json").read_text())


def grid_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "data/robustness").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("robustness") / "p",
                        {"synth": {"n_cards": 32}, "fetch": {"shard_bytes": 8 * 1_370_000}, "robustness": GRID})
    use_own_models(root)  # untrained models are enough to count passes
    out = run(root, "dvc", "repro").stdout
    assert ROBUSTNESS_STAGES <= stages_run(out)
    (root / "first_repro.log").write_text(out)
    return root


def run_counts(root: Path, model: str, cells: list[str]) -> dict[str, int]:
    """Forward passes each cell's last build computed, from the shard store's build records."""
    return {cell: build_record(root, f"data/robustness/{model}/{cell}")["counts"]["forward_passes"] for cell in cells}


def adapter_counts(stdout: str) -> dict[str, int]:
    """What each robustness stage's model adapter counted, from its printed summary."""
    return {line.split(":")[0]: int(line.split("adapter counted ")[1].split(")")[0])
            for line in stdout.splitlines() if "adapter counted" in line}


def cells(types, severities) -> list[str]:
    return [f"{kind}-{severity}" for kind in types for severity in severities]


def split_sizes(root: Path) -> tuple[int, int]:
    from evalstack.evaluation.items import read_items

    items = read_items(root / "data/raw")
    return len(items), int((items.split == "test").sum())


def test_clean_baseline_once_and_each_perturbed_item_once(project: Path):
    n_all, n = split_sizes(project)
    p, i, m = len(TYPES), len(SEVERITIES), len(MODELS)
    assert 0 < n < n_all
    for pipeline in PIPELINES:  # preprocessing: once per item per pipeline, by the preprocess stage only
        assert build_record(project, f"data/preprocessed/{pipeline}")["counts"]["items_preprocessed"] == n_all
    clean = sum(build_record(project, f"data/predictions/{model}")["counts"]["forward_passes"] for model in MODELS)
    assert clean == n_all * m  # the infer stage's clean passes (both splits); the test split's N·M among them
    counts = [summary(project, model)["counts"] for model in MODELS]
    assert sum(c["perturbed_forward_passes"] for c in counts) == n * p * i * m
    computed = [run_counts(project, model, cells(TYPES, SEVERITIES)) for model in MODELS]
    assert sum(sum(c.values()) for c in computed) == n * p * i * m  # what the run computed
    assert adapter_counts((project / "first_repro.log").read_text()) == {model: n * p * i for model in MODELS}
    assert all(c["clean_forward_passes"] == 0 and c["items_preprocessed"] == 0 for c in counts)
    assert all(c["clean_predictions_read"] == n and c["upstream_items_preprocessed"] == n_all for c in counts)
    metrics = json.loads((project / "robustness/metrics.json").read_text())
    assert metrics["reference"] == "tflite_cnn" and metrics["models"]["tflite_cnn"]["mce"] == 1.0
    run(project, sys.executable, "-m", "evalstack.cli.commands", "report")  # the one report shows the counts
    assert f"| {n * p * i} | 0 |" in (project / "reports/index.md").read_text()
    assert (project / "plots/robustness/torch_cnn/contrast.csv").read_text().startswith("severity,accuracy,flip_rate\n0,")
    assert len([name for name in grid_digests(project) if name.endswith("index.json")]) == p * i * m


def test_adding_a_severity_then_a_type_computes_only_the_new_cells(project: Path):
    """(Recomputing a cell without the store gives the same bytes: tests/test_robustness.py.)"""
    _, n = split_sizes(project)
    first = grid_digests(project)
    set_param(project, "robustness.severities", [1, 2, 3])
    out = run(project, "dvc", "repro").stdout
    assert stages_run(out) == GRID_CHANGE_RERUNS
    assert adapter_counts(out) == {model: n * 2 for model in MODELS}  # one new severity × 2 types
    for model in MODELS:
        new = {cell: n for cell in cells(TYPES, [3])}
        assert run_counts(project, model, cells(TYPES, [1, 2, 3])) == {**dict.fromkeys(cells(TYPES, [1, 2]), 0), **new}
    set_param(project, "robustness.types", [*TYPES, "motion_blur"])
    out = run(project, "dvc", "repro").stdout
    assert stages_run(out) == GRID_CHANGE_RERUNS
    assert adapter_counts(out) == {model: n * 3 for model in MODELS}  # one new type × 3 severities
    for model in MODELS:
        counts = run_counts(project, model, cells([*TYPES, "motion_blur"], [1, 2, 3]))
        assert counts == {**dict.fromkeys(cells(TYPES, [1, 2, 3]), 0), **{c: n for c in cells(["motion_blur"], [1, 2, 3])}}
        assert summary(project, model)["counts"]["perturbed_forward_passes"] == n * 9  # the grid's total
    grown = grid_digests(project)
    assert {name: grown[name] for name in first} == first  # the first cells, unchanged


def test_a_rerun_whose_cells_are_all_stored_loads_no_model(project: Path):
    """The cells' keys come from the signature infer remembered (models/signatures.py): DVC reruns the grid
    after its params change, every cell is in the store, and no model file is loaded."""
    set_param(project, "robustness.types", TYPES[::-1])  # the same cells, listed in another order
    try:
        out = run(project, "dvc", "repro").stdout
        assert {"robustness@tflite_cnn", "robustness@torch_cnn"} <= stages_run(out)
        assert adapter_counts(out) == dict.fromkeys(MODELS, 0)
        not_loaded = [line.split(":")[0] for line in out.splitlines() if "model not loaded" in line]
        assert sorted(not_loaded) == sorted(MODELS)
    finally:
        set_param(project, "robustness.types", TYPES)
        run(project, "dvc", "repro")
