"""Keras, ONNX, TorchScript and PLS adapters: real inference on real exported files."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from evalstack.config import ModelError, ModelSpec
from evalstack.demo.training.networks import TrainConfig, train_keras, train_torch_export
from evalstack.demo.training.onnx_export import export_onnx
from evalstack.demo.training.rows import ArrayRows
from evalstack.models.adapters import load_adapter
from evalstack.models.adapters.pls import PLSCoefficients, coefficients_csv, read_coefficients
from tests.weights_check import assert_runs_the_bytes_it_hashed

LABELS = ("a", "b", "c")
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
TARGETS = RNG.integers(0, 3, 8)


def _spec(file: Path, adapter: str, **changes) -> ModelSpec:
    # trust: the test builds its own torch files (models/trust.py)
    return replace(ModelSpec(name="m", file=file, adapter=adapter, pipeline="p", labels=LABELS, trust=True), **changes)


def _batch(n: int = 5, size: int = 32) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(n, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def pt2_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torch") / "m.pt2"
    train_torch_export(ArrayRows(IMAGES, TARGETS), 3, TrainConfig("torch_export", epochs=1, batch_size=4), out)
    return out


@pytest.fixture(scope="module")
def onnx_file(pt2_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export_onnx(pt2_file, out, trust=True)
    return out


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keras") / "m.keras"
    train_keras(ArrayRows(IMAGES, TARGETS), 3, TrainConfig("keras", epochs=1, batch_size=4), out)
    return out


@pytest.fixture(scope="module")
def torchscript_file(pt2_file, tmp_path_factory) -> Path:
    import torch

    module = torch.export.load(str(pt2_file)).module()
    out = tmp_path_factory.mktemp("ts") / "m.pt"
    torch.jit.trace(module, torch.zeros(2, 32, 32, 3)).save(str(out))
    return out


def test_keras_adapter_runs_real_inference(keras_file):
    model = load_adapter(_spec(keras_file, "keras"))
    batch = _batch()
    logits = model.predict_batch(batch)
    assert logits.shape == (5, 3) and model.contract()["input_shape"] == [32, 32, 3]
    single = np.concatenate([model.predict_batch(batch[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(single, logits, rtol=1e-5, atol=1e-5)
    assert model.forward_passes == 10 and model.forward_seconds > 0


def test_keras_archive_is_byte_deterministic(keras_file, tmp_path):
    again = tmp_path / "again.keras"
    train_keras(ArrayRows(IMAGES, TARGETS), 3, TrainConfig("keras", epochs=1, batch_size=4), again)
    assert again.read_bytes() == keras_file.read_bytes()


def test_onnx_export_matches_torch_and_is_deterministic(pt2_file, onnx_file, tmp_path):
    onnx_model = load_adapter(_spec(onnx_file, "onnx"))
    torch_model = load_adapter(_spec(pt2_file, "torch"))
    batch = _batch(7)  # any batch size: the exported batch dimension is dynamic
    ours, reference = onnx_model.predict_batch(batch), torch_model.predict_batch(batch)
    assert ours.shape == (7, 3)
    assert (ours.argmax(1) == reference.argmax(1)).all()
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    export_onnx(pt2_file, tmp_path / "again.onnx", trust=True)
    assert (tmp_path / "again.onnx").read_bytes() == onnx_file.read_bytes()


def test_torchscript_adapter_runs_real_inference(torchscript_file, pt2_file):
    with pytest.raises(ModelError, match="TorchScript models need input_shape"):
        load_adapter(_spec(torchscript_file, "torch"))
    model = load_adapter(_spec(torchscript_file, "torch", options={"input_shape": [32, 32, 3]}))
    batch = _batch(3)
    reference = load_adapter(_spec(pt2_file, "torch")).predict_batch(batch)
    np.testing.assert_allclose(model.predict_batch(batch), reference, atol=1e-5)


def test_onnx_wrong_shape_and_garbage_are_explained(onnx_file, tmp_path):
    model = load_adapter(_spec(onnx_file, "onnx"))
    with pytest.raises(ModelError, match=r"input shape \(16, 16, 3\) does not match the model's \(32, 32, 3\)"):
        model.predict_batch(np.zeros((1, 16, 16, 3), np.float32))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"nope")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        load_adapter(_spec(junk, "onnx"))


def test_label_count_and_dtype_errors(keras_file):
    with pytest.raises(ModelError, match="outputs 3 classes but 4 labels"):
        load_adapter(_spec(keras_file, "keras", labels=("a", "b", "c", "d"))).predict_batch(_batch(1))
    with pytest.raises(ModelError, match="input dtype <U1 is not numeric"):
        load_adapter(_spec(keras_file, "keras")).predict_batch(np.full((1, 32, 32, 3), "x"))


def _pls_file(tmp_path: Path, n_features: int = 6) -> tuple[Path, PLSCoefficients]:
    coefficients = PLSCoefficients(
        drugs=("amoxicillin", "ferrous sulfate"),
        intercepts=np.asarray([10.0, -2.5]),
        weights=np.random.default_rng(3).normal(size=(2, n_features)),
    )
    path = tmp_path / "pls.csv"
    path.write_bytes(coefficients_csv(coefficients))
    return path, coefficients


def test_pls_adapter_is_intercept_plus_dot_product(tmp_path):
    path, coefficients = _pls_file(tmp_path)
    first_line = path.read_text().splitlines()[0].split(",")
    assert first_line[0] == "amoxicillin" and len(first_line) == 1 + 1 + 6  # name, intercept, weights
    spec = _spec(path, "pls", task="concentration", labels=("amoxicillin", "ferrous-sulfate", "blank"))
    model = load_adapter(spec)
    features = np.random.default_rng(4).integers(0, 256, size=(4, 6)).astype(np.float32)
    out = model.predict_batch(features)
    expected = coefficients.intercepts + features.astype(np.float64) @ coefficients.weights.T
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert model.contract()["drugs"] == ["amoxicillin", "ferrous sulfate"]
    assert read_coefficients(path, "m").weights.tolist() == coefficients.weights.tolist()  # exact round trip


JUNK = bytes(range(256)) * 16  # what a framework reading the path again would find


@pytest.mark.parametrize("fmt, adapter", [("pt2", "torch"), ("torchscript", "torch"), ("onnx", "onnx"),
                                          ("keras", "keras")])
def test_each_framework_runs_the_bytes_the_signature_hashed(request, fmt, adapter, tmp_path, monkeypatch):
    batch = _batch(3)
    spec = _spec(request.getfixturevalue(f"{fmt}_file"), adapter, options={"input_shape": [32, 32, 3]})
    assert_runs_the_bytes_it_hashed(spec, load_adapter,
                                    lambda model: [model.predict_batch(batch)], JUNK, monkeypatch, tmp_path)


def test_an_onnx_model_with_external_data_is_refused(tmp_path, monkeypatch):
    # Its weights would sit outside the sha256 every result is keyed by: a changed `m.data` would reuse results.
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def flatten_matmul() -> onnx.ModelProto:
        weights = numpy_helper.from_array(np.ones((32 * 32 * 3, 3), np.float32), "W")
        nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32, 32, 3])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])], [weights])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)

    onnx.save(flatten_matmul(), tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    monkeypatch.chdir(tmp_path)  # where onnxruntime would find `m.data` for a model given as bytes
    with pytest.raises(ModelError, match=r"keeps tensors \['W'\] in external data files"):
        load_adapter(_spec(tmp_path / "m.onnx", "onnx"))
    onnx.save(flatten_matmul(), tmp_path / "whole.onnx")
    assert load_adapter(_spec(tmp_path / "whole.onnx", "onnx")).predict_batch(_batch(2)).shape == (2, 3)


def test_external_data_is_found_wherever_a_tensor_sits():
    from onnx import TensorProto, helper
    from onnx.external_data_helper import set_external_data

    from evalstack.models.adapters.onnx_runtime import _external_tensors

    def external(name: str) -> TensorProto:
        tensor = helper.make_tensor(name, TensorProto.FLOAT, [1], b"\0\0\0\0", raw=True)
        set_external_data(tensor, location="w.data", offset=0, length=4)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        return tensor

    sparse = helper.make_sparse_tensor(external("sparse"), helper.make_tensor("i", TensorProto.INT64, [1], [0]), [4])
    inner = helper.make_graph([helper.make_node("Constant", [], ["c"], value=external("in_subgraph"))], "then", [],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])])
    graph = helper.make_graph([helper.make_node("If", ["b"], ["y"], then_branch=inner, else_branch=inner)], "g",
                              [helper.make_tensor_value_info("b", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [external("initializer")],
                              sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert _external_tensors(model.SerializeToString()) == ["in_subgraph", "in_subgraph", "initializer", "sparse"]
    assert _external_tensors(b"not a model") == []


def test_pls_runs_the_coefficients_the_signature_hashed(tmp_path, monkeypatch):
    path, coefficients = _pls_file(tmp_path)
    other = PLSCoefficients(coefficients.drugs, coefficients.intercepts + 1.0, coefficients.weights)
    spec = _spec(path, "pls", task="concentration", labels=("amoxicillin", "ferrous-sulfate", "blank"))
    features = np.random.default_rng(4).integers(0, 256, size=(4, 6)).astype(np.float32)
    assert_runs_the_bytes_it_hashed(spec, load_adapter, lambda model: [model.predict_batch(features)],
                                    coefficients_csv(other), monkeypatch, tmp_path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("amoxicillin,1.0,2.0\nampicillin,1.0\n", "expected drug name, intercept and weights"),
        ("amoxicillin,1.0,2.0,3.0\nampicillin,1.0,2.0\n", "1 weights, earlier rows have 2"),
        ("amoxicillin,1.0,abc\n", "row 1 .'amoxicillin'.: could not convert"),
        ("amoxicillin,1,2\nAmoxicillin,1,2\n", "appears twice"),
        ("aspirin,1,2\n", r"rows for \['aspirin'\], which are not in its labels"),
    ],
)
def test_bad_pls_files_are_explained(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ModelError, match=message):
        load_adapter(_spec(path, "pls", task="concentration", labels=("amoxicillin", "ampicillin")))


def test_pls_needs_concentration_task(tmp_path):
    path, _ = _pls_file(tmp_path)
    with pytest.raises(ModelError, match="set task: concentration"):
        load_adapter(_spec(path, "pls", labels=("amoxicillin", "ferrous sulfate")))


TRAIN_AND_EXPORT = """
import sys, numpy as np
from pathlib import Path
from evalstack.demo.training.networks import TRAINERS, TrainConfig
from evalstack.demo.training.onnx_export import export_onnx
from evalstack.demo.training.rows import ArrayRows
rng = np.random.default_rng(0)
x = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
out = Path(sys.argv[1])
TRAINERS["torch_export"](ArrayRows(x, rng.integers(0, 3, 6)), 3, TrainConfig("torch_export", epochs=1, batch_size=3),
                         out / "m.pt2")
export_onnx(out / "m.pt2", out / "m.onnx", trust=True)  # built just above
"""


@pytest.mark.slow
def test_model_files_are_byte_identical_from_clones_at_different_paths(tmp_path):
    """torch.export records each node's stack trace (the library's absolute path, line numbers): dropped,
    so a colleague's clone trains the same bytes and nothing downstream of the model reruns."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO

    files = []
    for clone in (tmp_path / "a", tmp_path / "somewhere/much/deeper/b"):
        shutil.copytree(REPO / "src", clone / "src", ignore=shutil.ignore_patterns("__pycache__"))
        (clone / "out").mkdir()
        subprocess.run([sys.executable, "-c", TRAIN_AND_EXPORT, str(clone / "out")], check=True, capture_output=True,
                       env={"PYTHONPATH": str(clone / "src"), "PATH": "/usr/bin:/bin"})
        files.append({name: (clone / "out" / name).read_bytes() for name in ("m.pt2", "m.onnx")})
    assert files[0]["m.pt2"] == files[1]["m.pt2"]
    assert files[0]["m.onnx"] == files[1]["m.onnx"]
    assert str(tmp_path).encode() not in files[0]["m.pt2"]
