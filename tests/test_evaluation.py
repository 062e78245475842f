import csv
import json
from pathlib import Path

import numpy as np
import pytest

from evalstack.config import ModelError
from evalstack.evaluation.classification import EvaluationOutputs, label_indices, write_outputs
from evalstack.evaluation.metrics import classification_report


def test_label_indices_refuse_classes_the_model_does_not_know():
    assert label_indices(["b", "a"], ("a", "b"), "m").tolist() == [1, 0]
    with pytest.raises(ModelError, match=r"model m: true classes \['z'\] are not in its label list"):
        label_indices(["z"], ("a", "b"), "m")


def test_outputs_are_dvc_metrics_and_plot_files(tmp_path: Path):
    labels = ("a", "b")
    report = classification_report(np.array([0, 1, 1]), np.array([0, 1, 0]), labels)
    outputs = EvaluationOutputs(tmp_path / "m.json", tmp_path / "c/m.csv", tmp_path / "p/m.csv")
    write_outputs(report, [("a", "a"), ("b", "b"), ("b", "a")], 3, outputs)
    metrics = json.loads(outputs.metrics.read_text())
    assert metrics == {"accuracy": pytest.approx(2 / 3, abs=1e-6), "macro_f1": pytest.approx(2 / 3, abs=1e-6),
                       "n_items": 3, "forward_passes": 3}
    rows = list(csv.DictReader(outputs.pairs.open()))
    assert rows[2] == {"actual": "b", "predicted": "a"}
    per_class = list(csv.DictReader(outputs.per_class.open()))
    assert per_class == [{"class": "a", "accuracy": "1.000000", "support": "1"},
                         {"class": "b", "accuracy": "0.500000", "support": "2"}]
