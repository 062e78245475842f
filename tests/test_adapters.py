from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from evalstack.config import ModelError, ModelSpec
from evalstack.demo.training.networks import TrainConfig, train_keras_tflite, train_torch_export
from evalstack.demo.training.rows import ArrayRows
from evalstack.models.adapters import load_adapter
from tests.weights_check import assert_runs_the_bytes_it_hashed

LABELS = ("a", "b", "c")


@pytest.fixture(scope="module")
def tflite_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(8, 96, 96, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("tflite") / "m.tflite"
    train_keras_tflite(ArrayRows(x, rng.integers(0, 3, 8)), 3, TrainConfig("keras_tflite", epochs=1, batch_size=4), out)
    return out


@pytest.fixture(scope="module")
def torch_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("torch") / "m.pt2"
    train_torch_export(ArrayRows(x, rng.integers(0, 3, 8)), 3, TrainConfig("torch_export", epochs=1, batch_size=4), out)
    return out


def _spec(file: Path, adapter: str) -> ModelSpec:
    return ModelSpec(name="m", file=file, adapter=adapter, pipeline="p", labels=LABELS, trust=True)  # built here


@pytest.mark.parametrize("adapter, size", [("tflite", 96), ("torch", 32)])
def test_adapter_runs_real_inference(request, adapter, size):
    file = request.getfixturevalue(f"{adapter}_file")
    model = load_adapter(_spec(file, adapter))
    batch = np.random.default_rng(1).integers(0, 256, size=(5, size, size, 3)).astype(np.float32)
    logits = model.predict_batch(batch)
    assert logits.shape == (5, 3) and logits.dtype == np.float32
    assert model.forward_passes == 5
    # Batched and one-by-one inference agree: batch size is rightly left out of cache keys.
    single = np.concatenate([model.predict_batch(batch[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(single, logits, rtol=1e-5, atol=1e-5)


def test_tflite_runs_the_bytes_the_signature_hashed(tflite_file, tmp_path, monkeypatch):
    # LiteRT memory-maps a file it is given by path: bytes rewritten in place would change a loaded model's
    # outputs under its first signature. It is given the hashed bytes instead.
    batch = np.random.default_rng(1).integers(0, 256, size=(2, 96, 96, 3)).astype(np.float32)
    assert_runs_the_bytes_it_hashed(_spec(tflite_file, "tflite"), load_adapter,
                                    lambda model: [model.predict_batch(batch)], bytes(tflite_file.stat().st_size),
                                    monkeypatch, tmp_path)


def test_signature_covers_weights_and_contract(tflite_file, tmp_path):
    base = load_adapter(_spec(tflite_file, "tflite")).signature()
    relabelled = load_adapter(replace(_spec(tflite_file, "tflite"), labels=("x", "b", "c"))).signature()
    assert base.hex != relabelled.hex
    copy = tmp_path / "renamed.tflite"
    copy.write_bytes(tflite_file.read_bytes())
    assert load_adapter(_spec(copy, "tflite")).signature().hex == base.hex
    assert base.parts["input_shape"] == [96, 96, 3]


def test_wrong_input_shape_is_explained(tflite_file):
    model = load_adapter(_spec(tflite_file, "tflite"))
    with pytest.raises(ModelError, match=r"input shape \(64, 64, 3\) does not match the model's \(96, 96, 3\)"):
        model.predict_batch(np.zeros((1, 64, 64, 3), np.float32))


def test_label_count_mismatch_is_explained(torch_file):
    model = load_adapter(replace(_spec(torch_file, "torch"), labels=("a", "b")))
    with pytest.raises(ModelError, match="outputs 3 classes but 2 labels are declared"):
        model.predict_batch(np.zeros((1, 32, 32, 3), np.float32))


def test_nan_outputs_are_refused(torch_file):
    model = load_adapter(_spec(torch_file, "torch"))
    with pytest.raises(ModelError, match="1 of 1 outputs contain NaN"):
        model.predict_batch(np.full((1, 32, 32, 3), np.nan, np.float32))


def test_missing_file_and_hash_mismatch(tflite_file, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_adapter(_spec(tmp_path / "nope.tflite", "tflite"))
    with pytest.raises(ModelError, match="params.yaml expects 00000"):
        load_adapter(replace(_spec(tflite_file, "tflite"), sha256="0" * 64))


def test_unknown_adapter_and_garbage_file(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="adapter 'caffe' unknown"):
        load_adapter(_spec(junk, "caffe"))
    with pytest.raises(ModelError, match="not a loadable TFLite model"):
        load_adapter(_spec(junk, "tflite"))


def test_demo_training_is_byte_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 3, 8)
    config = TrainConfig("torch_export", epochs=1, batch_size=4)
    train_torch_export(ArrayRows(x, y), 3, config, tmp_path / "a.pt2")
    train_torch_export(ArrayRows(x, y), 3, config, tmp_path / "b.pt2")
    assert (tmp_path / "a.pt2").read_bytes() == (tmp_path / "b.pt2").read_bytes()


def test_a_runtime_failure_names_the_model_and_the_file(tflite_file, monkeypatch):
    """Trust round 2, item 13: a TFLite custom op fails at the first batch with a raw RuntimeError naming
    neither the model nor the file; evalstack's error names both (the runtime's message is kept)."""
    model = load_adapter(_spec(tflite_file, "tflite"))

    def unresolved(batch):
        raise RuntimeError("Encountered unresolved custom op: MyCustomOp.\nSee instructions: …")

    monkeypatch.setattr(model, "_forward", unresolved)
    with pytest.raises(ModelError, match=rf"model m: {tflite_file} failed to run on a batch of 2 \(RuntimeError: "
                                         r"Encountered unresolved custom op: MyCustomOp.\); .*custom op"):
        model.predict_batch(np.zeros((2, 96, 96, 3), np.float32))
