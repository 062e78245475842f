"""CE, relative CE and mCE against a hand-computed fixture; the report and plot files."""
import json
from pathlib import Path

import pytest

from evalstack.evaluation.robustness_metrics import combine, corruption_error, relative_corruption_error
from evalstack.reporting.robustness_report import write_outputs


def summary(model: str, clean_error: float, errors: dict[str, list[float]]) -> dict:
    cells = [{"type": kind, "severity": s + 1, "error": e, "accuracy": 1 - e, "flip_rate": e / 2}
             for kind, values in errors.items() for s, e in enumerate(values)]
    counts = {"cells": len(cells), "perturbed_forward_passes": 10, "clean_forward_passes": 0,
              "items_preprocessed": 0, "clean_predictions_read": 4, "upstream_clean_predictions": 8,
              "upstream_items_preprocessed": 8}
    return {"model": model, "n_items": 4, "clean": {"error": clean_error, "accuracy": 1 - clean_error},
            "cells": cells, "counts": counts}


# Reference: clean error 0.2; noise 0.3, 0.5; blur 0.25, 0.45.  Model: clean 0.1; noise 0.2, 0.3; blur 0.3, 0.5.
SUMMARIES = {
    "ref": summary("ref", 0.2, {"noise": [0.3, 0.5], "blur": [0.25, 0.45]}),
    "f": summary("f", 0.1, {"noise": [0.2, 0.3], "blur": [0.3, 0.5]}),
}


def test_ce_and_relative_ce_match_the_hand_computed_values():
    metrics = combine(SUMMARIES, "ref")
    f = metrics["models"]["f"]
    # CE_noise = (0.2 + 0.3) / (0.3 + 0.5) = 0.625; CE_blur = 0.8 / 0.7 = 1.142857
    assert f["types"]["noise"]["ce"] == pytest.approx(0.625)
    assert f["types"]["blur"]["ce"] == pytest.approx(1.142857, abs=1e-6)
    # relative: noise ((0.2-0.1) + (0.3-0.1)) / ((0.3-0.2) + (0.5-0.2)) = 0.3 / 0.4 = 0.75;
    #           blur  (0.2 + 0.4) / (0.05 + 0.25) = 2.0
    assert f["types"]["noise"]["relative_ce"] == pytest.approx(0.75)
    assert f["types"]["blur"]["relative_ce"] == pytest.approx(2.0)
    assert f["mce"] == pytest.approx((0.625 + 1.142857) / 2, abs=1e-6)
    assert f["relative_mce"] == pytest.approx(1.375)
    assert metrics["models"]["ref"]["mce"] == 1.0 and metrics["reference"] == "ref"
    assert f["types"]["noise"]["accuracy"] == {"1": 0.8, "2": 0.7}


def test_undefined_ratios_are_none_not_a_crash():
    assert corruption_error([0.1], [0.0]) is None
    assert relative_corruption_error([0.3], 0.1, [0.2], 0.2) is None
    # a reference that gets better under the type (blur that smooths noise away): no sign-flipped ratio
    assert relative_corruption_error([0.3, 0.4], 0.1, [0.15, 0.2], 0.2) is None


def test_reference_must_be_a_model_with_the_same_cells():
    without = combine(SUMMARIES, "alexnet")  # removed from params: accuracy stays, CE cannot be computed
    assert "'alexnet' has no grid" in without["note"]
    assert all(t["ce"] is None and t["accuracy"] for m in without["models"].values() for t in m["types"].values())
    short = {**SUMMARIES, "ref": summary("ref", 0.2, {"noise": [0.3], "blur": [0.25, 0.45]})}
    with pytest.raises(ValueError, match="no noise cells at severities \\[2\\]"):
        combine(short, "ref")


def test_outputs_are_the_metrics_json_and_dvc_plot_csvs(tmp_path: Path):
    metrics = combine(SUMMARIES, "ref")
    write_outputs(metrics, tmp_path / "m.json", tmp_path / "plots")
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(json.dumps(metrics))
    assert (tmp_path / "plots/f/noise.csv").read_text() == "severity,accuracy,flip_rate\n0,0.9,0.0\n1,0.8,0.1\n2,0.7,0.15\n"


def test_without_any_grid_the_plots_folder_still_exists(tmp_path: Path):
    """Only concentration models (no grid): the stage's DVC outputs must still be there."""
    write_outputs(combine({}, ""), tmp_path / "m.json", tmp_path / "plots")
    assert (tmp_path / "plots").is_dir() and not any((tmp_path / "plots").iterdir())
    assert json.loads((tmp_path / "m.json").read_text())["models"] == {}
