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


EXTENSIONS = (".pt2", ".pt", ".pth", ".pkl", ".onnx", ".tflite", ".keras", ".csv", ".bin")  # + an unknown one


def test_what_a_file_is_comes_from_its_bytes_not_its_name(pt2_file: Path, tmp_path: Path):
    from evalstack.models.trust import pickle_format

    torchscript = tmp_path / "script.pt"
    torch.jit.save(torch.jit.trace(_Linear().eval(), torch.zeros(1, 4, 4, 3)), str(torchscript))
    state = tmp_path / "state.pth"
    torch.save(_Linear().state_dict(), state)
    kinds = {pt2_file: "torch.export archive", torchscript: "TorchScript archive", state: "PyTorch pickle archive"}
    for source, kind in kinds.items():
        for suffix in EXTENSIONS:
            renamed = tmp_path / f"renamed{suffix}"
            renamed.write_bytes(source.read_bytes())
            assert kind in pickle_format(renamed), (source, suffix)
    raw = tmp_path / "raw.csv"
    raw.write_bytes(pickle.dumps({"a": 1}))
    assert "Python pickle" in pickle_format(raw)
    for data in (b"name,intercept\n", b"\x08\x07\x12\x04onnx", b"\x1c\x00\x00\x00TFL3", b"\x89HDF\r\n"):
        (tmp_path / "m.pt2").write_bytes(data)  # a data file named like a torch archive holds no pickle
        assert pickle_format(tmp_path / "m.pt2") is None


@pytest.mark.parametrize("suffix", EXTENSIONS)
def test_a_crafted_pickle_under_any_name_runs_through_no_load_path(pt2_file: Path, tmp_path: Path, suffix: str):
    """Issue 24, items 2 and 11: every path that loads a model decides by content, never by the file name."""
    from evalstack.demo.training.onnx_export import export_onnx
    from evalstack.detection.adapter import load_detector

    marker = tmp_path / "ran"
    archive = crafted_pt2(pt2_file, tmp_path / f"evil{suffix}", marker)
    raw = tmp_path / f"raw_evil{suffix}"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    for evil in (archive, raw):
        with pytest.raises(ModelError, match=r"models\.m: not loading .*can run arbitrary code"):
            load_adapter(_spec(evil, options={"input_shape": [4, 4, 3]}))  # infer and the Python API
        for adapter in ("onnx", "tflite", "keras", "pls"):
            with pytest.raises(ModelError, match=rf"models\.m: .* by its bytes, not a {adapter} model file"):
                load_adapter(_spec_adapter(evil, adapter))
        with pytest.raises(ModelError, match=r"export\.m: not loading"):
            export_onnx(evil, tmp_path / "out.onnx", name="m")
        with pytest.raises(ModelError, match=r"models\.m: not loading"):
            load_detector(ModelSpec(name="m", file=evil, adapter="torch_detection", pipeline="p", labels=LABELS,
                                    task="detect"))
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()


def _spec_adapter(file: Path, adapter: str) -> ModelSpec:
    return ModelSpec(name="m", file=file, adapter=adapter, pipeline="p", labels=LABELS)


def test_trust_in_params_must_be_a_boolean():
    params = {"models": {"m": {"file": "m.pt2", "adapter": "torch", "pipeline": "p", "labels": ["a"], "trust": "yes"}}}
    with pytest.raises(ConfigError, match="models.m.trust must be true or false, not 'yes'"):
        model_spec(params, "m")
    params["models"]["m"]["trust"] = True
    assert model_spec(params, "m").trust is True and "trust" not in model_spec(params, "m").options
