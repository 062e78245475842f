"""Remembered model signatures (models/signatures.py): the robustness stage keys its cells without loading the
model when the store remembers its signature. The memo must give exactly what a load gives, be ignored the
moment anything the signature depends on changes, and a model that loads with another signature is refused."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from evalstack.config import ModelError, ModelSpec
from evalstack.core.fingerprint import runtime_part
from evalstack.core.keys import sha256_file
from evalstack.demo.training.networks import TrainConfig, train_torch_export
from evalstack.demo.training.rows import ArrayRows
from evalstack.evaluation.robustness import GridConfig, build_grid
from evalstack.models import signatures
from evalstack.models.adapters import ADAPTERS, adapter_class, load_adapter
from evalstack.models.adapters.torch_export import TorchAdapter
from evalstack.models.inference import infer_layer
from evalstack.models.signatures import (
    FRAMEWORKS,
    PURE_ADAPTERS,
    DeferredAdapter,
    memo_key,
    memo_path,
    open_adapter,
    read_memo,
    remember_signature,
    remembered_signature,
)
from tests.conftest import store_in
from tests.layers import Project, digests, store_at
from tests.memos import damaged_memos
from tests.weights_check import assert_runs_the_bytes_it_hashed

REPO = Path(__file__).resolve().parents[1]
LABELS = ("a", "b", "c")
SIZE = 32  # the demo CNN's smallest input
N_ITEMS = 7


def torch_model(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(4, SIZE, SIZE, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    train_torch_export(ArrayRows(x, rng.integers(0, 3, 4)), 3,
                       TrainConfig("torch_export", epochs=1, batch_size=4, seed=seed), path)
    return path


def spec_of(file: Path, **changes) -> ModelSpec:
    return replace(ModelSpec(name="m", file=file, adapter="torch", pipeline="tiny", labels=LABELS, trust=True), **changes)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return torch_model(tmp_path_factory.mktemp("models") / "m.pt2")


def test_a_remembered_signature_is_what_a_load_gives(model_file, tmp_path):
    store = store_at(tmp_path / "store")
    first = open_adapter(spec_of(model_file), store)  # no memo yet: loaded, and remembered
    assert not isinstance(first, DeferredAdapter)
    second = open_adapter(spec_of(model_file), store)
    assert isinstance(second, DeferredAdapter) and not second.loaded
    assert second.signature() == load_adapter(spec_of(model_file)).signature() == first.signature()
    assert second.code_module == first.code_module and second.framework == first.framework
    assert second.weights_sha256 == sha256_file(model_file)
    assert second.forward_passes == 0
    batch = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.float32)
    assert np.array_equal(second.predict_batch(batch), first.predict_batch(batch))
    assert second.loaded and second.forward_passes == 3


def test_the_remembered_adapters_are_the_built_in_ones_and_their_frameworks_are_all_in_the_key():
    assert set(PURE_ADAPTERS) == {"tflite", "torch", "keras", "onnx", "pls"}
    for name, (module, cls) in PURE_ADAPTERS.items():
        assert tuple(ADAPTERS[name]) == (module, cls)
        loaded = adapter_class(name)  # imports the framework's adapter module (TensorFlow for keras)
        assert (loaded.__module__, loaded.__name__) == (module, cls)
        # a framework whose version is not in the memo key would let an upgrade reuse the old signature
        assert set(loaded.runtime_distributions) <= set(FRAMEWORKS), name


def test_the_memo_key_names_the_adapters_code_and_the_installed_frameworks(model_file):
    key = memo_key(spec_of(model_file), sha256_file(model_file))
    assert {PURE_ADAPTERS["torch"][0], "evalstack.models.adapters.base", "evalstack.models.trust"} <= set(key.parts["code"])
    assert key.parts["runtime"] == runtime_part(*FRAMEWORKS) and key.parts["runtime"]["torch"] != "absent"
    assert key.parts["spec"]["trust"] is True and key.parts["weights_sha256"] == sha256_file(model_file)


def test_anything_the_signature_depends_on_makes_the_memo_unused(model_file, tmp_path, monkeypatch):
    store = store_at(tmp_path / "store")
    file = tmp_path / "models/m.pt2"
    file.parent.mkdir()
    file.write_bytes(model_file.read_bytes())
    spec = spec_of(file)
    remember_signature(store, load_adapter(spec))
    assert remembered_signature(store, spec) == load_adapter(spec).signature()
    assert remembered_signature(store, replace(spec, labels=("a", "c", "b"))) is None
    assert remembered_signature(store, replace(spec, options={"input_shape": [SIZE, SIZE, 3]})) is None
    assert remembered_signature(store, replace(spec, layout="NCHW")) is None
    assert remembered_signature(store, replace(spec, sha256=sha256_file(file))) is None
    assert remembered_signature(store, replace(spec, trust=False)) is None
    real_runtime = signatures.runtime_part
    monkeypatch.setattr(signatures, "runtime_part", lambda *names: {**real_runtime(*names), "torch": "0.0-other"})
    assert remembered_signature(store, spec) is None
    monkeypatch.undo()
    real_code = signatures.code_part
    monkeypatch.setattr(signatures, "code_part", lambda *roots: {**real_code(*roots), PURE_ADAPTERS["torch"]: "0"})
    assert remembered_signature(store, spec) is None
    monkeypatch.undo()
    assert remembered_signature(store, spec) is not None
    stat = file.stat()
    torch_model(file, seed=1)  # other weights at the same path, the old mtime put back (cp -p, rsync -t do)
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert remembered_signature(store, spec) is None
    assert isinstance(open_adapter(spec, store), type(load_adapter(spec)))  # a load, whose signature is kept
    assert remembered_signature(store, spec) == load_adapter(spec).signature()


def test_a_damaged_or_foreign_memo_is_not_used_and_no_store_means_a_load(model_file, tmp_path):
    store = store_at(tmp_path / "store")
    spec, other = spec_of(model_file), spec_of(model_file, labels=("x", "y", "z"))
    remember_signature(store, load_adapter(spec))
    path = memo_path(store, memo_key(spec, sha256_file(model_file)))
    other_path = memo_path(store, memo_key(other, sha256_file(model_file)))
    other_path.write_bytes(path.read_bytes())  # spec's memo under other's name: it names its own key, refused
    assert remembered_signature(store, other) is None
    for damage in damaged_memos(path):
        assert remembered_signature(store, spec) is None, damage
    assert not isinstance(open_adapter(spec, None), DeferredAdapter)
    user_adapter = replace(spec, adapter="mine")  # an adapter a user registers may read anything: never remembered
    assert remembered_signature(store, user_adapter) is None


def test_a_built_in_name_registered_to_another_class_is_never_remembered(model_file, tmp_path, monkeypatch):
    store = store_in(tmp_path / "store")
    spec = spec_of(model_file)
    remember_signature(store, load_adapter(spec))
    assert remembered_signature(store, spec) is not None
    monkeypatch.setitem(ADAPTERS, "torch", ("tests.test_model_signatures", "OtherTorch"))
    assert remembered_signature(store, spec) is None
    monkeypatch.undo()
    other = store_in(tmp_path / "other")
    remember_signature(other, OtherTorch(spec))  # a subclass loaded under the built-in name: not remembered
    assert not (other.directory / "memo").exists()


class OtherTorch(TorchAdapter):
    """A user's adapter under the built-in name `torch`: its contract could read anything."""


def test_a_model_that_loads_with_another_signature_is_refused_and_its_memo_removed(model_file, tmp_path):
    store = store_at(tmp_path / "store")
    spec = spec_of(model_file)
    remember_signature(store, load_adapter(spec))
    path = memo_path(store, memo_key(spec, sha256_file(model_file)))
    record = json.loads(path.read_text())
    record["signature"]["parts"]["input_shape"] = [SIZE + 1, SIZE, 3]  # a memo that lies about the contract
    path.write_text(json.dumps(record))
    deferred = open_adapter(spec, store)
    assert isinstance(deferred, DeferredAdapter)
    with pytest.raises(ModelError, match="signature is not the one remembered"):
        deferred.predict_batch(np.zeros((1, SIZE, SIZE, 3), np.float32))
    assert not path.exists()


def test_a_file_replaced_after_the_load_is_not_given_the_loaded_files_signature(model_file, tmp_path):
    # infer loads, runs for minutes, then remembers: after a `dvc checkout` or a copy in between, the new bytes
    # get no signature (a robustness rerun must load them), and the memo kept is the loaded bytes' own.
    file = Path(tmp_path / "m.pt2")
    file.write_bytes(model_file.read_bytes())
    spec = spec_of(file)
    loaded = load_adapter(spec)
    torch_model(file, seed=1)  # replaced while the loaded model is still in use
    remember_signature(store := store_at(tmp_path / "store"), loaded)
    assert remembered_signature(store, spec) is None  # the new bytes: nothing remembered, so a load
    assert read_memo(store, memo_key(spec, loaded.weights_sha256)) == loaded.signature()  # the bytes it loaded

def test_a_file_replaced_between_the_hash_and_the_frameworks_read_runs_the_bytes_it_hashed(model_file, tmp_path,
                                                                                           monkeypatch):
    # Another model put in place right after the hash (a `dvc checkout`): had torch read the path again, that
    # model would run under the first one's signature, and a later run with the first file reuse its results.
    batch = np.random.default_rng(3).integers(0, 256, (4, SIZE, SIZE, 3)).astype(np.float32)
    other = torch_model(tmp_path / "other" / "m.pt2", seed=1).read_bytes()
    assert_runs_the_bytes_it_hashed(spec_of(model_file), load_adapter, lambda m: [m.predict_batch(batch)], other,
                                    monkeypatch, tmp_path)


GRID_SCRIPT = """
import json, sys
from pathlib import Path
from evalstack.cache.shardstore import ShardStore, StoreConfig
from evalstack.config import ModelSpec
from evalstack.evaluation.robustness import GridConfig, build_grid
from evalstack.models.signatures import open_adapter
root, file, types = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",")
store = ShardStore(StoreConfig(root / "store", 10**9, "copy"))
spec = ModelSpec(name="m", file=file, adapter="torch", pipeline="tiny", labels=("a", "b", "c"), trust=True)
adapter = open_adapter(spec, store)
config = GridConfig.from_params({"types": types, "severities": [1], "seed": 0, "split": "dev"})
build = build_grid(root / "data/raw", root / "data/preprocessed/tiny", root / "data/predictions/m", root / "grid",
                   adapter, config, store, batch_size=3)
print(json.dumps({"torch": "torch" in sys.modules, "passes": build.forward_passes,
                  "computed": {name: cell.counts["shards_computed"] for name, cell in build.cells.items()}}))
"""


def run_grid(project: Project, model: Path, types: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", GRID_SCRIPT, str(project.root), str(model), ",".join(types)],
                         capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_robustness_rerun_with_every_cell_stored_imports_no_framework_and_gives_the_same_bytes(model_file, tmp_path):
    project = Project(tmp_path / "p")
    store = store_at(project.root / "store")
    project.grow(N_ITEMS)
    project.fetch(store)
    project.preprocess(store, size=SIZE)
    adapter = load_adapter(spec_of(model_file))
    infer_layer(project.pre, project.pred, adapter, batch_size=3, store=store)
    remember_signature(store, adapter)  # what the infer stage does

    first = run_grid(project, model_file, ["gaussian_noise"])  # computes its cell: loads the model at the first batch
    assert first["torch"] and first["passes"] == N_ITEMS
    rerun = run_grid(project, model_file, ["gaussian_noise"])  # every cell stored: no framework, no load
    assert rerun == {"torch": False, "passes": 0, "computed": {"gaussian_noise-1": 0}}
    grown = run_grid(project, model_file, ["gaussian_noise", "contrast"])  # a new cell: loaded, computed
    assert grown["torch"] and grown["passes"] == N_ITEMS and grown["computed"]["gaussian_noise-1"] == 0

    # The same grid from nothing with a model loaded the usual way, without any store: the same bytes.
    config = GridConfig.from_params({"types": ["gaussian_noise", "contrast"], "severities": [1], "seed": 0,
                                     "split": "dev"})
    build_grid(project.raw, project.pre, project.pred, project.root / "scratch", load_adapter(spec_of(model_file)),
               config, None, batch_size=3)
    for cell in ("gaussian_noise-1", "contrast-1"):
        assert digests(project.root / "grid" / cell) == digests(project.root / "scratch" / cell)


def test_an_adapters_options_are_in_its_signature_except_those_that_change_no_output(model_file):
    """An adapter reads its options (one of yours may read any: a scale, a sign, a feature set): outputs computed
    under one value must not be served for another, in a notebook or after `dvc repro` (DVC reruns infer on an
    options change, and the store answers by the signature). The comparison's parity_of changes no output."""
    from evalstack.detection.adapter import DetectionAdapter

    plain = load_adapter(spec_of(model_file)).signature()
    assert load_adapter(spec_of(model_file, options={"negate": True})).signature() != plain
    assert load_adapter(spec_of(model_file, options={"negate": True})).signature() != \
        load_adapter(spec_of(model_file, options={"negate": False})).signature()
    assert load_adapter(spec_of(model_file, options={"parity_of": "other"})).signature() == plain
    # a detector's post-processing runs on stored candidates under its own key: not in the signature
    assert {"confidence_threshold", "nms_iou", "max_detections"} <= set(DetectionAdapter.options_outside_signature)


def test_a_layer_computed_under_other_options_is_not_current_for_evaluate(model_file):
    """evaluate and compare check a predictions layer against the model entry without loading the model: the
    options now, not the layer's, must be in the signature they expect."""
    import types

    from evalstack.core.keys import Key
    from evalstack.models.predictions import expected_model_signature

    built = load_adapter(spec_of(model_file, options={"temperature": 1.0})).signature()
    layer = types.SimpleNamespace(key=Key("predictions", {"model": dict(built.parts)}))
    assert expected_model_signature(layer, spec_of(model_file, options={"temperature": 1.0})) == built
    assert expected_model_signature(layer, spec_of(model_file, options={"temperature": 2.0})) != built
    assert expected_model_signature(layer, spec_of(model_file, options={"temperature": 1.0, "parity_of": "m"})) == built


def test_an_option_a_key_cannot_hold_is_refused_by_name(model_file):
    """A function has no stable form to compare, and a set's order differs between processes; a numpy scalar
    (np.argmax's), a path or an infinity from YAML are values a key holds."""
    with pytest.raises(ModelError, match="option .transform. is ufunc, not a value a cache key can hold"):
        load_adapter(spec_of(model_file, options={"transform": np.negative})).signature()
    with pytest.raises(ModelError, match="option .classes. is list"):
        load_adapter(spec_of(model_file, options={"classes": [{"a", "b"}]})).signature()
    held = {"top": np.int64(3), "scale": np.float32(0.5), "table": Path("t.csv"), "clip": float("inf")}
    assert load_adapter(spec_of(model_file, options=held)).signature().parts["options"]["top"] == 3
