"""Pickle-backed model files (torch .pt2, TorchScript) load only when their entry pins sha256 or trusts them.

Issue 15, finding 2: `torch.export.load` unpickles parts of a .pt2 with `weights_only=False`,
so a .pt2 from a remote or from `dvc import-url` can run code on load. The crafted file
here writes a marker file when it is loaded; the tests check it never gets the chance.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from evalstack.config import ConfigError, ModelError, ModelSpec, model_spec
from evalstack.models.adapters import load_adapter

LABELS = ("a", "b")


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4 * 4 * 3, len(LABELS))

    def forward(self, x):
        return self.lin(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def pt2_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("trust") / "model.pt2"
    torch.export.save(torch.export.export(_Linear().eval(), (torch.zeros(2, 4, 4, 3),)), str(path))
    return path


class _Payload:
    """Unpickling this runs `exec`: what a crafted model file would do on a victim's machine."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def crafted_pt2(source: Path, dest: Path, marker: Path) -> Path:
    """`source` with one weight switched to a pickle that writes `marker` when torch.export.load reads it."""
    with zipfile.ZipFile(source) as archive:
        files = {info.filename: archive.read(info) for info in archive.infolist()}
    config_name = next(name for name in files if name.endswith("model_weights_config.json"))
    config = json.loads(files[config_name])
    weight = next(iter(config["config"].values()))
    weight["use_pickle"] = True
    files[config_name] = json.dumps(config).encode()
    files[config_name.rsplit("/", 1)[0] + "/" + weight["path_name"]] = pickle.dumps(_Payload(marker))
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return dest


def _spec(file: Path, **changes) -> ModelSpec:
    return ModelSpec(name="m", file=file, adapter="torch", pipeline="p", labels=LABELS, **changes)


def test_a_crafted_pt2_runs_code_when_trusted(pt2_file: Path, tmp_path: Path):
    """The payload is real: `trust: true` on someone else's file hands them this process."""
    marker = tmp_path / "ran"
    crafted = crafted_pt2(pt2_file, tmp_path / "crafted.pt2", marker)
    with pytest.raises(ModelError):  # the payload returns nothing sensible, so loading fails afterwards
        load_adapter(_spec(crafted, trust=True))
    assert marker.read_text() == "ran"


def test_a_pt2_without_sha256_or_trust_is_not_loaded(pt2_file: Path, tmp_path: Path):
    marker = tmp_path / "ran"
    crafted = crafted_pt2(pt2_file, tmp_path / "crafted.pt2", marker)
    digest = hashlib.sha256(crafted.read_bytes()).hexdigest()
    with pytest.raises(ModelError) as raised:
        load_adapter(_spec(crafted))
    message = str(raised.value)
    assert "models.m: not loading" in message and "torch.export archive (.pt2" in message
    assert "can run arbitrary code when loaded" in message
    assert "neither pins its `sha256:` nor says `trust: true`" in message and f"sha256: {digest}" in message
    assert not marker.exists()


def test_a_pinned_sha256_that_differs_refuses_before_loading(pt2_file: Path, tmp_path: Path):
    marker = tmp_path / "ran"
    crafted = crafted_pt2(pt2_file, tmp_path / "crafted.pt2", marker)
    pinned = hashlib.sha256(pt2_file.read_bytes()).hexdigest()  # the file the publisher stated
    with pytest.raises(ModelError, match=f"params.yaml expects {pinned}"):
        load_adapter(_spec(crafted, sha256=pinned))
    assert not marker.exists()


def test_a_pinned_sha256_that_matches_loads_and_runs(pt2_file: Path):
    model = load_adapter(_spec(pt2_file, sha256=hashlib.sha256(pt2_file.read_bytes()).hexdigest()))
    assert model.predict_batch(np.zeros((2, 4, 4, 3), np.float32)).shape == (2, len(LABELS))  # exported at batch 2


def test_torchscript_needs_the_same_pin_or_trust(tmp_path: Path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(_Linear().eval(), torch.zeros(1, 4, 4, 3)), str(path))
    with pytest.raises(ModelError, match=r"TorchScript archive \(code and pickles that run on load\)"):
        load_adapter(_spec(path, options={"input_shape": [4, 4, 3]}))
    assert load_adapter(_spec(path, options={"input_shape": [4, 4, 3]}, trust=True)).input_shape() == (4, 4, 3)


def test_the_onnx_export_stage_needs_the_export_entry_to_pin_or_trust(pt2_file: Path, tmp_path: Path):
    from evalstack.demo.training.onnx_export import export_onnx

    marker = tmp_path / "ran"
    crafted = crafted_pt2(pt2_file, tmp_path / "crafted.pt2", marker)
    with pytest.raises(ModelError, match=r"export\.torch_cnn_onnx: not loading"):
        export_onnx(crafted, tmp_path / "out.onnx", name="torch_cnn_onnx")
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("name, unsafe", [("m.pt2", True), ("m.pt", True), ("m.pth", True), ("m.onnx", False),
                                           ("m.tflite", False), ("m.keras", False), ("pls.csv", False)])
def test_which_formats_need_a_pin(tmp_path: Path, name: str, unsafe: bool):
    from evalstack.models.trust import pickle_format, require_trusted

    path = tmp_path / name
    path.write_bytes(b"x")
    assert (pickle_format(path) is not None) == unsafe
    if not unsafe:
        require_trusted("m", path, None, False)  # data formats load without either


def test_trust_in_params_must_be_a_boolean():
    params = {"models": {"m": {"file": "m.pt2", "adapter": "torch", "pipeline": "p", "labels": ["a"], "trust": "yes"}}}
    with pytest.raises(ConfigError, match="models.m.trust must be true or false, not 'yes'"):
        model_spec(params, "m")
    params["models"]["m"]["trust"] = True
    assert model_spec(params, "m").trust is True and "trust" not in model_spec(params, "m").options
