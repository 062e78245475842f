"""What the notebook API refuses before it runs anything."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from evalstack.api import Dataset
from tests.e2e import REPO


def test_a_batch_size_for_a_declared_model_other_than_infer_batch_size_is_refused(tmp_path: Path):
    """`dvc repro` infers a declared model at infer.batch_size, which is in its predictions key; another
    batch_size given to apply_model was dropped without a word, and the layer of the declared size returned
    (found by a hunt)."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    dataset = Dataset(tmp_path)
    declared = dataset.params["infer"]["batch_size"]
    with pytest.raises(ValueError, match=rf"batch_size={declared + 1}\): a declared model is inferred by `dvc repro` "
                                         rf"at infer.batch_size \({declared}\)"):
        dataset.apply_model("tflite_cnn", batch_size=declared + 1)
    assert dataset.stages_run == []
