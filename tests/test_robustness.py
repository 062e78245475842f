"""The robustness grid on tiny real layers: counts of what is computed, reuse when the grid grows, determinism."""
from pathlib import Path

import pytest

from evalstack.config import ModelSpec
from evalstack.core.layers import CacheStaleError, Layer
from evalstack.evaluation.robustness import GridConfig, RobustnessError, build_grid, grid_results
from tests.layers import NumpyAdapter, Project, digests, store_at

LABELS = ("a", "lactose")
N_ITEMS = 10  # three preprocessed shards of 4, 4, 2 items


def adapter(root: Path, weights: bytes = b"weights1") -> NumpyAdapter:
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "models/m.npy").write_bytes(weights)
    return NumpyAdapter(ModelSpec("m", root / "models/m.npy", "numpy", "tiny", LABELS, options={"size": 8}))


@pytest.fixture
def project(tmp_path: Path) -> Project:
    project = Project(tmp_path)
    store = store_at(tmp_path / "store")
    project.grow(N_ITEMS)
    project.fetch(store)
    project.preprocess(store)
    from evalstack.models.inference import infer_layer

    infer_layer(project.pre, project.pred, adapter(tmp_path), batch_size=3, store=store)
    return project


def grid(project: Project, types, severities, seed=0, out="grid", store=True, weights=b"weights1", threads=1):
    config = GridConfig.from_params({"types": types, "severities": severities, "seed": seed, "split": "dev"})
    model = adapter(project.root, weights)
    build = build_grid(project.raw, project.pre, project.pred, project.root / out, model, config,
                       store_at(project.root / "store") if store else None, batch_size=3, threads=threads)
    return build, model


def computed(build) -> dict[str, int]:
    return {name: cell.counts["forward_passes"] for name, cell in build.cells.items()}


def test_every_cell_runs_each_item_once_and_nothing_clean(project: Project):
    build, model = grid(project, ["gaussian_noise", "contrast"], [1, 2])
    assert computed(build) == {"gaussian_noise-1": N_ITEMS, "gaussian_noise-2": N_ITEMS, "contrast-1": N_ITEMS,
                               "contrast-2": N_ITEMS}
    assert model.forward_passes == build.forward_passes == 4 * N_ITEMS  # P·I·N, no clean pass
    clean_accuracy, results = grid_results(build, project.raw, LABELS)
    assert len(results) == 4 and 0.0 <= clean_accuracy <= 1.0


def test_adding_a_severity_or_a_type_computes_only_the_new_cells(project: Project):
    grid(project, ["gaussian_noise"], [1, 2])
    build, model = grid(project, ["gaussian_noise"], [1, 2, 3])
    assert computed(build) == {"gaussian_noise-1": 0, "gaussian_noise-2": 0, "gaussian_noise-3": N_ITEMS}
    assert build.cells["gaussian_noise-1"].counts["shards_reused"] == len(Layer.open(project.pre).shards)
    build, model = grid(project, ["gaussian_noise", "motion_blur"], [1, 2, 3])
    assert computed(build) == {**{f"gaussian_noise-{s}": 0 for s in (1, 2, 3)},
                               **{f"motion_blur-{s}": N_ITEMS for s in (1, 2, 3)}}
    assert model.forward_passes == 3 * N_ITEMS
    build, _ = grid(project, ["motion_blur"], [3])  # a smaller grid drops the other cells' layers
    assert sorted(p.name for p in (project.root / "grid").iterdir()) == ["motion_blur-3"]


def test_same_seed_gives_byte_identical_predictions_and_another_seed_does_not(project: Project):
    first, _ = grid(project, ["gaussian_noise", "rotate_shift"], [3], out="first")
    again, _ = grid(project, ["gaussian_noise", "rotate_shift"], [3], out="again", store=False)  # recomputed
    assert sum(computed(again).values()) == 2 * N_ITEMS
    assert digests(*(project.root / "first").iterdir()) == digests(*(project.root / "again").iterdir())
    other, _ = grid(project, ["gaussian_noise"], [3], seed=1, out="other", store=False)
    assert digests(project.root / "other/gaussian_noise-3") != digests(project.root / "first/gaussian_noise-3")


def test_perturbing_in_threads_gives_the_same_bytes_and_counts(project: Project):
    # threads are not in the cell key (not a dvc.yaml param either): that is only right if they change no byte
    types = ["gaussian_noise", "motion_blur", "jpeg", "rotate_shift"]  # random draws, OpenCV, Pillow, scipy
    one, _ = grid(project, types, [2, 5], out="one", store=False)
    three, model = grid(project, types, [2, 5], out="three", store=False, threads=3)
    assert computed(three) == computed(one) == {f"{t}-{s}": N_ITEMS for t in types for s in (2, 5)}
    assert model.forward_passes == three.forward_passes == 8 * N_ITEMS
    assert digests(*(project.root / "three").iterdir()) == digests(*(project.root / "one").iterdir())
    with pytest.raises(RobustnessError, match="at least one perturbation thread, not 0"):
        grid(project, ["contrast"], [1], out="none", threads=0)


def test_clean_predictions_of_another_model_are_refused(project: Project):
    with pytest.raises(CacheStaleError, match="infer@m"):
        grid(project, ["contrast"], [1], weights=b"weights2")


def test_bad_grid_is_refused_naming_the_cause():
    with pytest.raises(ValueError, match="perturbation 'blizzard' unknown"):
        GridConfig.from_params({"types": ["blizzard"], "severities": [1]})
    with pytest.raises(ValueError, match="severity 6 out of range"):
        GridConfig.from_params({"types": ["fog"], "severities": [6]})
    with pytest.raises(RobustnessError, match="must not be empty"):
        GridConfig.from_params({"types": [], "severities": [1]})


def test_a_model_without_a_grid_is_skipped_with_its_reason_before_any_grid_code_loads(tmp_path: Path):
    """Every concentration model has a robustness stage with nothing to do; it says why and ends before it
    imports the perturbations, scipy.ndimage, the grid and the model loader (~0.2 s of each such process).
    Reads the repository's params.yaml, where `pls` is a concentration model."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    summary = tmp_path / "robustness" / "pls.json"
    probe = ("import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path('stages/robustness.py', run_name='stage')"
             "['main'](); print(sorted(m for m in sys.modules if m.startswith(('evalstack.preprocess.perturbations',"
             " 'evalstack.evaluation.robustness', 'evalstack.models.signatures', 'scipy'))))")
    done = subprocess.run([sys.executable, "-c", probe, "robustness.py", "--model", "pls", "--raw", "r",
                           "--preprocessed", "p", "--predictions", "q", "--out", str(tmp_path / "cells"),
                           "--summary", str(summary)], cwd=repo, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(repo / "src")})
    assert done.stdout.splitlines() == ["pls: no perturbation grid (task concentration: the grid measures "
                                        "classification accuracy)", "[]"]
    assert json.loads(summary.read_text()) == {"model": "pls",
                                               "skipped": "task concentration: the grid measures classification accuracy"}
    assert (tmp_path / "cells").is_dir()
