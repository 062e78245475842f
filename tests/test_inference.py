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


def test_a_batch_size_change_recomputes_the_predictions_and_going_back_reuses_them(tmp_path: Path):
    # torch's CPU kernels may round a logit's last bits differently at another batch size (~1e-7 at 1 and 7
    # against 32, found by an audit), so predictions computed at one size are not reused at another.
    from evalstack.core.layers import Layer
    from evalstack.models.inference import infer_layer
    from evalstack.models.predictions import batch_size_of
    from evalstack.preprocess.pipelines import preprocess_layer
    from tests.layers import Project, numpy_model, store_at, tiny_pipeline

    project = Project(tmp_path / "project")
    project.grow(22)
    project.fetch(None)
    preprocess_layer(project.raw, project.pre, tiny_pipeline(), "lz4", name="tiny")
    store, model = store_at(tmp_path / "store"), numpy_model(tmp_path / "models")
    first = infer_layer(project.pre, project.pred, model, batch_size=3, store=store)
    other = infer_layer(project.pre, tmp_path / "other", model, batch_size=2, store=store)
    back = infer_layer(project.pre, tmp_path / "back", model, batch_size=3, store=store)
    shards = first.counts["shards"]
    assert shards > 1 and first.counts["shards_computed"] == other.counts["shards_computed"] == shards
    assert back.counts["shards_computed"] == 0 and back.counts["shards_reused"] == shards
    assert [batch_size_of(Layer.open(d).key) for d in (project.pred, tmp_path / "other", tmp_path / "back")] == [3, 2, 3]
    pipeline = Layer.open(project.pre).key
    assert len(open_predictions(tmp_path / "other", model.signature(), pipeline, "m")) == 22  # a reader takes any size
