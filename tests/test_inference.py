from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp

from evalstack.core.keys import Key
from evalstack.core.kinds import PREDICTIONS_KIND
from evalstack.core.layers import CacheStaleError, LayerWriter, shard_name
from evalstack.models.predictions import open_predictions, prediction_columns, predictions_key


def test_prediction_columns_follow_upstream_nn_predict():
    logits = np.array([[1.0, 3.0, 0.0], [2.0, -1.0, 0.5]], np.float32)
    columns = prediction_columns(np.asarray([b"a" * 64, b"b" * 64], dtype="S64"), logits)
    assert columns["label"].tolist() == [1, 0]
    expected = np.exp(3.0) / np.exp([1.0, 3.0, 0.0]).sum()
    assert columns["probability"][0] == pytest.approx(expected, rel=1e-6)
    assert columns["energy"][1] == pytest.approx(logsumexp([2.0, -1.0, 0.5]), rel=1e-6)


def _predictions(directory: Path, weights: str) -> Key:
    model = Key("model", {"weights_sha256": weights, "labels": ["a", "b"]})
    pipeline = Key("pipeline", {"kind": "crop_resize", "params": {"resize": 64}})
    writer = LayerWriter(directory, PREDICTIONS_KIND, predictions_key(model, pipeline))
    writer.add_shard(shard_name(0), prediction_columns(np.asarray([b"k" * 64], "S64"), np.zeros((1, 2), np.float32)))
    writer.finish()
    return pipeline


def test_open_predictions_accepts_matching_and_refuses_other_weights(tmp_path: Path):
    pipeline = _predictions(tmp_path / "p", "a" * 64)
    same = Key("model", {"weights_sha256": "a" * 64, "labels": ["a", "b"]})
    assert len(open_predictions(tmp_path / "p", same, pipeline, "m")) == 1
    other = Key("model", {"weights_sha256": "b" * 64, "labels": ["a", "b"]})
    with pytest.raises(CacheStaleError, match=r"model.weights_sha256: aaaaaaaaaaaa → bbbbbbbbbbbb[\s\S]*dvc repro infer@m"):
        open_predictions(tmp_path / "p", other, pipeline, "m")


def test_open_predictions_refuses_other_pipeline(tmp_path: Path):
    _predictions(tmp_path / "p", "a" * 64)
    model = Key("model", {"weights_sha256": "a" * 64, "labels": ["a", "b"]})
    resized = Key("pipeline", {"kind": "crop_resize", "params": {"resize": 48}})
    with pytest.raises(CacheStaleError, match="pipeline.params.resize: 64 → 48"):
        open_predictions(tmp_path / "p", model, resized, "m")
