"""The evaluate stage's remembered model signature (detection/signatures.py): it must give exactly the key a
load gives, and be ignored the moment anything the signature depends on changes."""
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from evalstack.config import ModelError
from evalstack.core.keys import Key
from evalstack.detection import signatures
from evalstack.detection.adapter import load_detector
from evalstack.detection.candidates import candidates_code, candidates_key
from evalstack.detection.postprocess import detections_key
from evalstack.detection.signatures import expected_detections_key, remember_signature, remembered_signature
from evalstack.models.signatures import memo_path
from tests.conftest import store_in
from tests.detection_helpers import LABELS, export_tiny_detector
from tests.detection_helpers import spec as _spec
from tests.memos import damaged_memos

REPO = Path(__file__).resolve().parents[1]
PIPELINE = Key("pipeline", {"size": 32})


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return export_tiny_detector(tmp_path_factory.mktemp("sig") / "det.pt2")


def loaded_key(spec) -> Key:
    adapter = load_detector(spec)
    return detections_key(candidates_key(adapter.signature(), PIPELINE, candidates_code(type(adapter))),
                          adapter.postprocess)


def test_a_remembered_signature_gives_the_key_a_load_gives(model_file, tmp_path):
    store = store_in(tmp_path / "store")
    spec = _spec(model_file, nms_iou=0.6)
    assert remembered_signature(store, spec) is None
    first = expected_detections_key(spec, PIPELINE, store)  # loads, then remembers
    assert first == loaded_key(spec)
    assert remembered_signature(store, spec) == load_detector(spec).signature()
    assert expected_detections_key(spec, PIPELINE, store) == first
    # post-processing is outside the signature: another NMS IoU, threshold or cap reuses the memo (that is when
    # evaluate re-runs with no forward pass), and the key still changes in its post-processing part, as a load's
    for options in ({"nms_iou": 0.7}, {"confidence_threshold": 0.2, "max_detections": 50}):
        other = replace(spec, options=options)
        assert remembered_signature(store, other) == remembered_signature(store, spec)
        assert expected_detections_key(other, PIPELINE, store) == loaded_key(other) != first
    # what a load refuses of the post-processing options, the memo's path refuses too
    with pytest.raises(ModelError, match=r"max_detections 200 exceeds candidates.top_k 100"):
        expected_detections_key(replace(spec, options={"max_detections": 200}), PIPELINE, store)


def test_the_memo_is_ignored_when_the_weights_the_entry_or_the_frameworks_change(model_file, tmp_path, monkeypatch):
    store = store_in(tmp_path / "store")
    file = shutil.copy(model_file, tmp_path / "det.pt2")
    spec = _spec(Path(file))
    expected_detections_key(spec, PIPELINE, store)
    assert remembered_signature(store, spec) is not None

    export_tiny_detector(Path(file), seed=1)  # other weights at the same path
    assert remembered_signature(store, spec) is None
    assert expected_detections_key(spec, PIPELINE, store) == loaded_key(spec)

    wider = replace(spec, options={"candidates": {"min_score": 0.001, "top_k": 300}})
    assert remembered_signature(store, wider) is None
    assert remembered_signature(store, replace(spec, labels=spec.labels[::-1])) is None

    real = signatures.installed_identity
    for other in ("0.0-other " + "0" * 64, real("torch").split()[0] + " " + "0" * 64):  # another version; another build
        monkeypatch.setattr(signatures, "installed_identity", lambda name: other if name == "torch" else real(name))
        assert remembered_signature(store, spec) is None
    monkeypatch.undo()
    real_runtime = signatures.runtime_part  # what a signature records: onnxruntime-gpu upgraded beside onnxruntime
    monkeypatch.setattr(signatures, "runtime_part",
                        lambda *names: {**real_runtime(*names), "onnxruntime": "onnxruntime 1.0 + onnxruntime-gpu 1.1"})
    assert remembered_signature(store, spec) is None
    monkeypatch.undo()
    real_code = signatures.code_part
    monkeypatch.setattr(signatures, "code_part", lambda *roots: {**real_code(*roots), "evalstack.detection.adapter": "0"})
    assert remembered_signature(store, spec) is None


def test_a_damaged_or_foreign_memo_is_not_used(model_file, tmp_path):
    store = store_in(tmp_path / "store")
    spec, other = _spec(model_file), _spec(model_file, candidates={"min_score": 0.001, "top_k": 300})
    remember_signature(store, spec, load_detector(spec).signature())
    path = memo_path(store, signatures.memo_key(spec, store.stamps.sha256(model_file)))
    other_path = memo_path(store, signatures.memo_key(other, store.stamps.sha256(model_file)))
    other_path.write_bytes(path.read_bytes())  # spec's memo under other's name: names its own key, refused
    assert remembered_signature(store, other) is None
    for damage in damaged_memos(path):
        assert remembered_signature(store, spec) is None, damage
    assert expected_detections_key(spec, PIPELINE, store) == loaded_key(spec)  # loads again, rewrites the memo
    assert remembered_signature(store, spec) is not None


def test_adapters_that_read_the_machine_are_never_remembered(model_file, tmp_path):
    store = store_in(tmp_path / "store")
    spec = replace(_spec(model_file), adapter="torchvision")
    remember_signature(store, spec, Key("model", {"weights_sha256": "x"}))
    assert remembered_signature(store, spec) is None
    assert not (store.directory / "memo").exists()
    assert remembered_signature(None, _spec(model_file)) is None  # no store: always a load


def test_an_adapter_registered_under_a_built_in_name_is_never_remembered(model_file, tmp_path, monkeypatch):
    from evalstack.detection import adapter as registry

    store = store_in(tmp_path / "store")
    spec = _spec(model_file)
    expected_detections_key(spec, PIPELINE, store)
    assert remembered_signature(store, spec) is not None
    monkeypatch.setitem(registry.DETECTION_ADAPTERS, "torch_detection", ("mine", "MyDetector"))  # may read anything
    assert remembered_signature(store, spec) is None


def test_with_a_memo_the_key_is_checked_without_importing_the_framework(model_file, tmp_path):
    store = store_in(tmp_path / "store")
    expected = expected_detections_key(_spec(model_file), PIPELINE, store)
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from evalstack.core.keys import Key\n"
        "from evalstack.detection.signatures import expected_detections_key\n"
        "from evalstack.cache.shardstore import ShardStore, StoreConfig\n"
        "from evalstack.config import ModelSpec\n"
        f"spec = ModelSpec(name='det', file=Path({str(model_file)!r}), adapter='torch_detection', pipeline='lb32', "
        f"labels={LABELS!r}, task='detect', options={{}}, trust=True)\n"
        f"store = ShardStore(StoreConfig(Path({str(tmp_path / 'store')!r}), max_bytes=1 << 40))\n"
        "key = expected_detections_key(spec, Key('pipeline', {'size': 32}), store)\n"
        "print(key.hex, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    assert out.stdout.split() == [expected.hex, "False"]
