"""A detector's signature, remembered in the shard store, for stages that read detections but run no model.

The evaluate stage refuses detections of another model or post-processing, so it recomputes the key
the detections must carry, and that starts from the model's signature: the weights' sha256 plus the
contract the adapter reads from the loaded file (its input shape, among others). Loading the model
means importing its framework (torch: ~1.3 s) and reading the file, and an NMS or threshold change
re-runs evaluate without any forward pass: the load was most of that stage's time.

So infer, which loads the model anyway, remembers its signature in the store (as does evaluate when it
had to load), under a memo key that names everything the signature is computed from:

- the whole model entry from params.yaml (file, adapter, options, labels, pin, trust, ...), except the
  post-processing options (threshold, NMS IoU, cap), which are no part of a signature;
- the file's sha256, hashed on every run (a rewrite that keeps the size and mtime is seen);
- the code of the adapter (its module's import closure, as in every layer key);
- the installed frameworks an adapter can use: each one's version as a signature's runtime part records it
  (every distribution that installs its package: fingerprint.runtime_part), and the sha256 of its files (so
  another build of the same version, whose `__version__` a contract may record, is another key).

A memo is used only when all of these are equal, so it gives the signature a load would give; a
missing, damaged or foreign memo file means a load, as before. Only the built-in adapters, and only
where their contract is a function of those inputs, are remembered:
- torch_detection and yolo always (their runners read nothing of the machine);
- torchvision only for `device: cpu`, a file that is not ONNX, and torch and torchvision installed with a
  RECORD of their files. Under `device: auto` (the default) the contract's device kind is whether this
  machine has a GPU; `device: cuda` is refused by a load on a machine that has none, which a memo would
  not see; an ONNX file's contract records the version of the onnxruntime module, which may come from a
  distribution (onnxruntime-gpu) the key cannot name; the contract records torch's `__version__`, which
  only the installed files tell apart between two builds of one version; and with `pm_config:` the
  options come from another file, whose bytes the memo key does not name. Those load.
Nothing is remembered or served where another class would load (an adapter registered under a built-in
name, or a class replaced in its module), and no signature of another class is served. Memos live in the
local store directory only, never in a shared `store.url`: they are cheaper to recompute than to trust
from elsewhere.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import fields

from evalstack.cache.shardstore import ShardStore
from evalstack.config import ModelSpec
from evalstack.core.fingerprint import code_part, installed_identity, runtime_part
from evalstack.core.keys import Key, sha256_file
from evalstack.detection.candidates import candidates_code, candidates_key, module_candidates_code
from evalstack.detection.decoding import CandidateBound, PostProcess
from evalstack.detection.postprocess import detections_key
from evalstack.models.signatures import read_memo, spec_entry, write_memo

# adapter name → (module, class) of the built-in adapters whose signature can depend only on the memo key's parts
PURE_ADAPTERS = {"torch_detection": ("evalstack.detection.adapter", "DetectionAdapter"),
                 "yolo": ("evalstack.detection.yolo_adapter", "YoloAdapter"),
                 "torchvision": ("evalstack.detection.torchvision_adapter", "TorchvisionAdapter")}
# every framework a detection adapter may load, by distribution name (read from the installed files: nothing imported)
FRAMEWORKS = ("torch", "torchvision", "numpy", "onnxruntime", "ultralytics")
MEMO_KIND = "detector_signature"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # installed_identity's digest when no RECORD lists a file
POSTPROCESS_OPTIONS = tuple(field.name for field in fields(PostProcess))  # confidence_threshold, nms_iou, max_detections


def memo_key(spec: ModelSpec, weights_sha256: str) -> Key:
    # The post-processing options are left out: they are no part of a signature (the adapter's contract leaves
    # them out, so that an NMS change runs no model), and a change of them is exactly when the memo should serve.
    # What the adapter checks of them on load is checked on the memo's path too (expected_detections_key).
    return Key(MEMO_KIND, {"spec": spec_entry(spec, POSTPROCESS_OPTIONS), "weights_sha256": weights_sha256,
                           "code": code_part(PURE_ADAPTERS[spec.adapter][0]),
                           "runtime": runtime_part(*FRAMEWORKS),  # what a signature's own runtime part reads
                           "installed": {name: installed_identity(name) or "absent" for name in FRAMEWORKS}})


def remembered_kind(spec: ModelSpec) -> bool:
    """Whether this entry's signature depends only on the memo key's parts (the module docstring says which)."""
    if spec.adapter not in PURE_ADAPTERS or not _built_in_loads(spec.adapter):
        return False
    if spec.adapter == "torchvision":
        # as torchvision_adapter.resolve_device reads it (missing means auto)
        device = str(spec.options.get("device") or "auto").strip().lower()
        return device == "cpu" and "pm_config" not in spec.options and _keyed_by_their_files(("torch", "torchvision"))
    return True


def _built_in_loads(adapter: str) -> bool:
    """Whether load_detector would load the built-in class. Nothing is imported: a process that has not imported
    the registry or the adapter's module (both import torch) cannot have put another class there."""
    module_name, class_name = PURE_ADAPTERS[adapter]
    registry = sys.modules.get("evalstack.detection.adapter")
    if registry is not None:
        entry = registry.DETECTION_ADAPTERS.get(adapter)
        if ((entry.__module__, entry.__qualname__) if isinstance(entry, type) else entry) != PURE_ADAPTERS[adapter]:
            return False
    found = getattr(sys.modules.get(module_name), class_name, None)  # as load_detector looks a (module, class) up
    return found is None or (found.__module__, found.__qualname__) == (module_name, class_name)


def _keyed_by_their_files(distributions: tuple[str, ...]) -> bool:
    """torchvision's contract records torch's and torchvision's `__version__` as imported; the memo key tells two
    builds of one version apart by their installed files (version.py among them) only where a RECORD lists them:
    not for an editable or RECORD-less install, where the version alone is known."""
    return all(installed_identity(name).split(" ")[-1] not in ("", EMPTY_SHA256) for name in distributions)


def _rememberable(spec: ModelSpec, signature: Key) -> bool:
    """A signature of the built-in class; for torchvision, not of an ONNX file (its contract records the
    onnxruntime module's version, which onnxruntime-gpu installs under another name than the key reads)."""
    return (signature.parts.get("class") == ".".join(PURE_ADAPTERS[spec.adapter])
            and not (spec.adapter == "torchvision" and signature.parts.get("format") == "onnx"))


def _key_of(store: ShardStore | None, spec: ModelSpec, weights_sha256: str | None = None) -> Key | None:
    try:
        if store is None or not remembered_kind(spec):
            return None
        key = memo_key(spec, weights_sha256 or sha256_file(spec.file))  # hashed each run: see models/signatures.py
        key.hex  # noqa: B018 (hashed here: an option no key can hold fails now, not in the memo's write)
    except OSError:  # no file: loading says so in the adapter's words
        return None
    except (TypeError, ValueError):  # an option no key can hold (a notebook's object): a load decides
        return None
    return key


def remember_signature(store: ShardStore | None, spec: ModelSpec, signature: Key) -> None:
    """Keep the signature a loaded adapter computed (a full disk turns it off, as for any write into the store),
    under the sha256 of the bytes it loaded: a file replaced since the load is not given their signature."""
    sha256 = signature.parts.get("weights_sha256")
    key = _key_of(store, spec, sha256 if isinstance(sha256, str) else None)
    if key is not None and store is not None and _rememberable(spec, signature):
        write_memo(store, key, signature)


def remembered_signature(store: ShardStore | None, spec: ModelSpec) -> Key | None:
    """The signature a load of this model would compute, when a memo under the same key holds it; else None."""
    key = _key_of(store, spec)
    signature = None if key is None or store is None else read_memo(store, key)
    return signature if signature is not None and _rememberable(spec, signature) else None


def expected_detections_key(spec: ModelSpec, pipeline_key: Key, store: ShardStore | None,
                            batch_size: int | None = None) -> Key:
    """The key the model's current detections layer must carry: its candidates (signature, pipeline, code) and
    its post-processing. From a memo when one holds the signature (nothing imported, no file loaded), else
    from the loaded adapter, whose signature is then remembered."""
    signature = remembered_signature(store, spec)
    if signature is not None:
        post = _postprocess_as_a_load_checks_it(spec, signature)
        code = module_candidates_code(PURE_ADAPTERS[spec.adapter][0])
    else:
        from evalstack.detection.adapter import load_detector  # imports the framework: only when loading

        adapter = load_detector(spec)
        signature, post, code = adapter.signature(), adapter.postprocess, candidates_code(type(adapter))
        remember_signature(store, spec, signature)
    return detections_key(candidates_key(signature, pipeline_key, code, batch_size), post)


def _postprocess_as_a_load_checks_it(spec: ModelSpec, signature: Key) -> PostProcess:
    """The post-processing options, refused where loading the adapter would refuse them."""
    post, bound = PostProcess.from_options(spec.options), CandidateBound.from_options(spec.options)
    if spec.adapter == "torch_detection":
        bound.check_covers(post, spec.name)
    elif spec.adapter == "yolo":
        from evalstack.detection.yolo_adapter import check_layout_covers  # imports no framework

        check_layout_covers(str(signature.parts["output"]), bound, post, spec.name)
    # torchvision checks none on load: the postprocess stage checks them against the style the candidates record
    return post
