"""A model's signature, remembered in the shard store, so a stage whose results are all stored loads no model.

A robustness cell's key starts from the model's signature: the weights' sha256 plus the contract the
adapter reads from the loaded file (its input shape, among others). Loading the model means importing its
framework and reading the file (torch with a .pt2 file: ~3 s here), and DVC re-runs the robustness stage
after edits that change none of its cells (a comment in its code, a param toggled back): the load was most of
that run.

So a stage that loads a model anyway (infer) remembers its signature in the store, under a memo key that
names everything the signature is computed from:

- the whole model entry from params.yaml (file, adapter, labels, options, pin, trust, task, layout, ...);
- the file's sha256, hashed on every run (milliseconds for these files, and a rewrite that keeps the
  size and mtime is still seen: the stat-based stamps the layers use would not see it);
- the code of the adapter (its module's import closure, as in every layer key);
- the installed versions of the frameworks an adapter can use.

`open_adapter` then gives a `DeferredAdapter` with the remembered signature, which loads the model at its
first forward pass and refuses to go on if the loaded model's signature is not the remembered one. A
missing, damaged or foreign memo file means a load, as before. Only the built-in adapters are remembered:
their contract is a function of those inputs (a user's own adapter may read anything). Memos live in the
local store directory only, never in a shared `store.url`: they are cheaper to recompute than to trust from
elsewhere.
"""
from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from evalstack.cache.shardstore import ShardStore
from evalstack.config import ModelError, ModelSpec
from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.fingerprint import code_part, runtime_part
from evalstack.core.keys import Key, sha256_file
from evalstack.models.adapters import ADAPTERS, load_adapter
from evalstack.models.adapters.base import ModelAdapter

MEMO_FOLDER = "memo"
MEMO_KIND = "model_signature"
# The built-in adapters, by name → (module, class), as ADAPTERS registers them (nothing imported to know it).
# Named here, not taken from ADAPTERS: an adapter a user adds or puts under a built-in name may read anything
# (the machine, a GPU) into its contract, so it is never remembered.
PURE_ADAPTERS = {
    "tflite": ("evalstack.models.adapters.tflite", "TFLiteAdapter"),
    "torch": ("evalstack.models.adapters.torch_export", "TorchAdapter"),
    "keras": ("evalstack.models.adapters.keras_model", "KerasAdapter"),
    "onnx": ("evalstack.models.adapters.onnx_runtime", "OnnxAdapter"),
    "pls": ("evalstack.models.adapters.pls", "PLSAdapter"),
}
# every distribution a built-in adapter's runtime_distributions names (read from metadata: nothing imported);
# tests/test_model_signatures.py checks that it covers them all
FRAMEWORKS = ("ai-edge-litert", "keras", "numpy", "onnxruntime", "tensorflow-cpu", "torch")


# -- memo records (shared with detection.signatures) ----------------------------------------------------------
def spec_entry(spec: ModelSpec, leave_out_options: tuple[str, ...] = ()) -> dict[str, Any]:
    """The model entry as a memo key names it: every field, the file as given, some options left out."""
    options = {name: value for name, value in spec.options.items() if name not in leave_out_options}
    return {**asdict(spec), "file": str(spec.file), "options": options}


def memo_path(store: ShardStore, key: Key) -> Path:
    return store.directory / MEMO_FOLDER / f"{key.hex}.json"


def write_memo(store: ShardStore, key: Key, signature: Key) -> None:
    """Keep a signature under its memo key (a full disk turns it off, as for any write into the store)."""
    record = {"memo": json.loads(key.to_json()), "signature": json.loads(signature.to_json())}
    path = memo_path(store, key)
    with store.caching():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(record, sort_keys=True) + "\n").encode())


def read_memo(store: ShardStore, key: Key) -> Key | None:
    """The signature kept under `key`; None for a missing, unreadable or foreign record."""
    try:
        record: dict[str, Any] = json.loads(memo_path(store, key).read_text())
        # the record names its own key: a file copied under another name is not this model's memo
        if record["memo"] != json.loads(key.to_json()):
            return None
        signature = Key(record["signature"]["kind"], record["signature"]["parts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if signature.kind != "model" or signature.parts.get("weights_sha256") != key.parts.get("weights_sha256"):
        return None
    return signature


# -- classification and concentration models -----------------------------------------------------------------
def memo_key(spec: ModelSpec, weights_sha256: str) -> Key:
    return Key(MEMO_KIND, {"spec": spec_entry(spec), "weights_sha256": weights_sha256,
                           "code": code_part(PURE_ADAPTERS[spec.adapter][0]), "runtime": runtime_part(*FRAMEWORKS)})


def _key_of(store: ShardStore | None, spec: ModelSpec, weights_sha256: str | None = None) -> Key | None:
    if store is None or spec.adapter not in PURE_ADAPTERS or tuple(ADAPTERS.get(spec.adapter, ())) != PURE_ADAPTERS[spec.adapter]:
        return None
    try:
        return memo_key(spec, weights_sha256 or sha256_file(spec.file))
    except OSError:  # no file: loading says so in the adapter's words
        return None


def remember_signature(store: ShardStore | None, adapter: ModelAdapter) -> None:
    """Keep the signature a loaded adapter computed, for later runs that may not need the model."""
    loaded_as = (type(adapter).__module__, type(adapter).__name__)
    # The sha256 of the bytes the adapter loaded (its framework loaded those very bytes: models/weights.py), not
    # the file hashed once more: a file replaced since the load still leaves the loaded bytes' memo (read_memo
    # refuses a record whose signature names other bytes than its key, so hashing again kept nothing then).
    key = (_key_of(store, adapter.spec, adapter.weights_sha256)
           if loaded_as == PURE_ADAPTERS.get(adapter.spec.adapter) else None)
    if key is not None and store is not None:
        write_memo(store, key, adapter.signature())


def remembered_signature(store: ShardStore | None, spec: ModelSpec) -> Key | None:
    """The signature a load of this model would compute, when a memo under the same key holds it; else None."""
    key = _key_of(store, spec)
    return None if key is None or store is None else read_memo(store, key)


class DeferredAdapter:
    """A model known by its remembered signature, loaded at its first forward pass.

    It answers what a stage asks before any forward pass (spec, signature, the adapter's code module, the
    forward-pass count) without the framework. The load checks that the model's signature is the
    remembered one: results keyed by another signature are never computed."""

    def __init__(self, spec: ModelSpec, signature: Key, store: ShardStore):
        self.spec, self._signature, self._store = spec, signature, store
        self.code_module = PURE_ADAPTERS[spec.adapter][0]
        self.framework = str(signature.parts.get("framework", spec.adapter))
        self.weights_sha256 = str(signature.parts["weights_sha256"])
        self._loaded: ModelAdapter | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def forward_passes(self) -> int:
        return self._loaded.forward_passes if self._loaded is not None else 0

    @property
    def forward_seconds(self) -> float:
        return self._loaded.forward_seconds if self._loaded is not None else 0.0

    def signature(self) -> Key:
        return self._signature

    def adapter(self) -> ModelAdapter:
        with self._lock:
            if self._loaded is None:
                adapter = load_adapter(self.spec)
                if adapter.signature().hex != self._signature.hex:  # the cells' keys hash the signature
                    with self._store.caching():
                        memo_path(self._store, memo_key(self.spec, self.weights_sha256)).unlink(missing_ok=True)
                    raise ModelError(
                        f"model {self.spec.name}: the loaded model's signature is not the one remembered in "
                        f"{self._store.directory / MEMO_FOLDER}; that memo is removed, run the stage again")
                self._loaded = adapter
            return self._loaded

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        return self.adapter().predict_batch(batch)


def open_adapter(spec: ModelSpec, store: ShardStore | None) -> ModelAdapter | DeferredAdapter:
    """The model as a stage that may need no forward pass wants it: deferred when a memo holds its
    signature, else loaded now (and its signature remembered)."""
    signature = remembered_signature(store, spec)
    if signature is not None and store is not None:
        return DeferredAdapter(spec, signature, store)
    adapter = load_adapter(spec)
    remember_signature(store, adapter)
    return adapter
