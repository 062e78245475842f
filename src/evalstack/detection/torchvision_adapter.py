"""The `torchvision` detection adapter: torchvision-format detectors, with their post-processing opened.

A model file is one of (told apart by its content, not its name):
- TorchScript (`torch.jit.script(model).save(...)`; a zip holding `constants.pkl` and `code/`);
- a `torch.export` archive (`.pt2`; a zip holding `archive_format`): post-processing frozen inside;
- a state_dict (`torch.save(model.state_dict())`) plus `builder:` (a torchvision builder, see BUILDERS) and
  `num_classes:` (background included, as torchvision counts);
- an ONNX export of a torchvision detector (`torch.onnx.export(model, ([image],), dynamo=False)`: one [3, H, W]
  image in, boxes, labels, scores out), run by onnxruntime one image per run: post-processing frozen inside.
The torch formats unpickle or run code when loaded: the model entry must pin `sha256:` or say `trust: true`.
ONNX is data (a protobuf) and needs neither; a pinned `sha256:` is checked all the same.

Two calling contracts are accepted and told apart by the module's declared input (TorchScript schema) or, for
a `.pt2`, by trying (an ONNX export takes one CHW image per run): a torchvision detector takes a list of CHW
float tensors in 0–1 (its transform normalises and resizes inside) and returns its detections (scripted:
`(losses, detections)`); PerceptionMetrics' contract takes one batched `[B, 3, H, W]` tensor (normalised with
`pm_config`'s mean/std when given) and returns a list of dicts. Either returns per
image `boxes` xyxy in input pixels (the letterboxed array; the placement maps them to the original image),
`labels` (class c ↦ labels[c - 1]: torchvision's class 0 is background; a RetinaNet/FCOS box of class 0
stays a candidate, label -1, through NMS and the cap as in the model, and is dropped after) and `scores`.

Post-processing is opened where the detector's attributes are reachable (a builder's module, a scripted
torchvision model): two-stage models' `roi_heads` and RetinaNet/FCOS/SSD themselves get `score_thresh =
candidates.min_score`, `nms_thresh = 1.0` (IoU > 1 never holds: NMS keeps every box) and
`detections_per_img = candidates.top_k`, so the candidates cached are the model's own pre-NMS boxes, and
post-processing from the cache (styles.nms_then_cap) equals the model configured at any threshold >=
min_score. `topk_candidates` (RetinaNet/FCOS per level, SSD per class, applied to boxes above the score
threshold) is left at the model's value: the top K of the boxes above min_score, restricted to those above
a threshold t, are exactly the top K of the boxes above t, so the cache holds what the model keeps at any
t; raising K would add boxes the model at t never considers. The transform maps boxes to the input size
after NMS; where it resizes (e.g. an 800-px Faster R-CNN on 320-px letterboxes), a builder's module
reports its boxes before that mapping and post-processing applies torchvision's `resize_boxes` to the kept
ones. A scripted model that resizes, a PerceptionMetrics wrapper (it may post-process after the detector)
a `.pt2` and an ONNX export keep their post-processing: it is recorded as frozen with the values it ran with
(read from the model, or `frozen_nms:` in params, which an ONNX export must give: its values are constants in
the graph), and a change they cannot answer exactly is refused.

`device: auto | cpu | cuda[:N]` (ONNX: onnxruntime's CPU provider, or its CUDA provider where installed); the
device kind (cpu/cuda) is part of the contract, so a CPU cache is never served as a GPU result.
`pm_config: path` reads a PerceptionMetrics model config (see PM_KEYS).
"""
from __future__ import annotations

import io
import json
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torchvision  # registers torchvision's ops (nms, roi_align): scripted detectors need them to load
from torchvision.models import detection as tv_detection

from evalstack.config import ModelError, ModelSpec
from evalstack.core.fingerprint import check_functions_in_closure, defining_module
from evalstack.core.keys import Key
from evalstack.detection.boxes import Candidates, Detections
from evalstack.detection.decoding import CandidateBound, PostProcess
from evalstack.detection.postprocess import model_space_detections
from evalstack.detection.styles import FROZEN, NMS_THEN_CAP, StyleRecord, check_style_covers
from evalstack.models.adapters.onnx_runtime import onnx_session
from evalstack.models.trust import pickle_format, require_trusted
from evalstack.models.weights import WeightFile, check_pin, read_weights

BUILDERS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
            "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2",
            "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large", "ssd300_vgg16", "maskrcnn_resnet50_fpn",
            "maskrcnn_resnet50_fpn_v2")
FORMATS = {"torchscript": "TorchScript archive (code that runs on load)",
           "export": "torch.export archive (.pt2; torch.export.load unpickles parts of it)",
           "state_dict": "PyTorch pickle (a state_dict for `builder:`)",
           "onnx": "ONNX model (a protobuf: data, no code runs on load)"}
TORCHVISION, PERCEPTIONMETRICS, ONNX = "torchvision", "perceptionmetrics", "onnx"
ONNX_FROZEN = "an ONNX export: its thresholds and NMS are constants in the graph"
# PerceptionMetrics model config key → this adapter's option (None: read and checked, not an option here)
PM_KEYS = {"confidence_threshold": "confidence_threshold", "nms_threshold": "nms_iou", "model_format": None,
           "resize": None, "normalization": None, "batch_size": None, "iou_threshold": None}


def file_format(source: Path | bytes) -> str:
    """torchscript | export | state_dict | onnx, from the bytes: an archive's member names; outside a zip, an ONNX
    ModelProto starts with its field 1 (ir_version, tag byte 0x08), a pickle with 0x80 (a legacy pickle is a
    state_dict, refused unless trusted)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return ONNX if data[:1] == b"\x08" and pickle_format(data) is None else "state_dict"
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    if any(name.endswith("/archive_format") for name in names):
        return "export"
    if any(name.endswith("/constants.pkl") for name in names) or any("/code/" in name for name in names):
        return "torchscript"
    return "state_dict"


def resolve_device(option: Any, model: str, onnx: bool = False) -> torch.device:
    """auto → cuda when present; cuda on a machine without one is an error before any work. For an ONNX file
    "present" means onnxruntime offers its CUDAExecutionProvider (the onnxruntime-gpu build)."""
    if onnx:
        import onnxruntime

        cuda, runtime = "CUDAExecutionProvider" in onnxruntime.get_available_providers(), "onnxruntime"
        hint = "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    else:
        cuda, runtime = torch.cuda.is_available(), "torch"
        hint = "torch sees no CUDA device on this machine (a CPU build of torch, or no GPU)"
    text = str(option or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if cuda else "cpu")
    if text != "cpu" and not (text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())):
        raise ModelError(f"model {model}: device {option!r} unknown; use auto, cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        if not cuda:
            raise ModelError(f"model {model}: device {option!r} asked for, but {hint}; use `device: cpu` or `auto`")
        index = int(text[5:]) if ":" in text else 0
        if runtime == "torch" and index >= torch.cuda.device_count():
            raise ModelError(f"model {model}: device {option!r}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    return torch.device(text)


PM_CONFIG_FOLDER = "pm_configs"  # beside the detection dvc.yaml; its infer, grid and evaluate stages track it


def read_pm_config(path: Path, options: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The options, checked against a PerceptionMetrics model config. Every value of the config that changes a
    result must also be written in params.yaml, equal: DVC tracks params.yaml, not the JSON, so a value read
    only from the JSON would change results without any stage rerunning (a stale result). The config is a
    cross-check that the params say what PerceptionMetrics ran with.

    The file must be in PM_CONFIG_FOLDER, which the stages that read it list as a dependency: an edited
    config there reruns them, and they check it again. Anywhere else an edit would rerun nothing, and the
    cached pipeline would exit 0 where a run from nothing refuses the config."""
    parts = Path(path).parts
    if Path(path).is_absolute() or len(parts) < 2 or parts[0] != PM_CONFIG_FOLDER or ".." in parts:
        raise ModelError(f"model {model}: pm_config {path} must be a file in {PM_CONFIG_FOLDER}/ (as "
                         f"{PM_CONFIG_FOLDER}/{Path(path).name}), the folder infer, grid and evaluate track: DVC "
                         "reruns them when a config there changes; an edit of one elsewhere would rerun nothing")
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"model {model}: pm_config {path}: cannot read it as JSON ({error})") from None
    unknown = sorted(set(config) - set(PM_KEYS) - {"num_workers", "evaluation_step", "crop"})
    if unknown:
        raise ModelError(f"model {model}: pm_config {path}: unknown keys {unknown}; known: {sorted(PM_KEYS)}")
    if config.get("model_format", TORCHVISION) != TORCHVISION:
        raise ModelError(f"model {model}: pm_config {path} says model_format {config['model_format']!r}; "
                         "this is the torchvision adapter (a YOLO-format model needs `adapter: yolo`)")
    if "crop" in config:
        raise ModelError(f"model {model}: pm_config {path}: `crop` is not supported (the letterbox keeps the "
                         "whole image)")
    stated = dict(PM_KEYS, normalization="normalization")
    for pm_key, option in stated.items():
        if option is None or pm_key not in config:
            continue
        where = f"models.{model}.{option}" if option != "normalization" else f"models.{model}.options.{option}"
        if option not in options:
            raise ModelError(f"model {model}: pm_config {path} says {pm_key}: {config[pm_key]}; write it in "
                             f"params.yaml too ({where}: {json.dumps(config[pm_key])}): DVC tracks params.yaml, not "
                             "the JSON, so a value only there would change results without rerunning anything")
        if not _same(options[option], config[pm_key]):
            raise ModelError(f"model {model}: params.yaml says {option}: {options[option]} but pm_config {path} "
                             f"says {pm_key}: {config[pm_key]}; make them agree (params.yaml is what DVC tracks)")
    merged = dict(options)
    merged["pm"] = {"resize": config.get("resize"), "normalization": options.get("normalization")}
    merged["pm"] = {key: value for key, value in merged["pm"].items() if value is not None}
    return merged


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def _runtime_version(fmt: str) -> dict[str, str]:
    """onnxruntime's version for an ONNX file (another runtime computes other float results), else nothing."""
    if fmt != ONNX:
        return {}
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


def _detector(module: Any) -> Any:
    """The torchvision detector inside `module` (itself, or a wrapper's `model`), or None."""
    for candidate in (module, getattr(module, "model", None)):
        if candidate is not None and (hasattr(candidate, "roi_heads") or hasattr(candidate, "score_thresh")):
            return candidate
    return None


def _heads(detector: Any) -> Any:
    """Where a detector keeps score_thresh / nms_thresh / detections_per_img."""
    return detector.roi_heads if hasattr(detector, "roi_heads") else detector


class TorchvisionAdapter:
    """A torchvision-format detector: candidates (its own pre-NMS boxes, or its frozen output) per image."""

    framework = "torchvision"

    def __init__(self, spec: ModelSpec):
        if spec.task != "detect":
            raise ModelError(f"model {spec.name}: adapter torchvision needs `task: detect`, not {spec.task!r}")
        if not spec.file.exists():
            raise ModelError(f"model {spec.name}: file {spec.file} does not exist (`dvc pull` it, or add it "
                             "with `dvc add`/`dvc import-url`)")
        options = dict(spec.options)
        if "pm_config" in options:
            options = read_pm_config(Path(options["pm_config"]), options, spec.name)
        self.spec, self.options = spec, options
        weights = read_weights(spec.file)  # the framework loads these bytes, never the path (models/weights.py)
        self.format = file_format(weights.data)
        self.device = resolve_device(options.get("device"), spec.name, self.format == ONNX)  # before any loading
        self.postprocess = PostProcess.from_options(options)
        self.bound = CandidateBound.from_options(options)
        if self.format == ONNX:
            self._frozen_values(ONNX_FROZEN)  # required, and checked before any work
        else:
            require_trusted(spec.name, weights, spec.sha256, spec.trust)
        check_pin(spec.name, weights, spec.sha256)
        self.weights_sha256 = weights.sha256
        self.module = self._load(weights)
        # a scripted model may be loaded again as saved (_restore_frozen_values): from these bytes, not the path
        self._scripted_weights = weights if self.format == "torchscript" else None
        self.calling = self._calling_contract()
        self.forward_passes, self.forward_seconds = 0, 0.0
        self._styles: dict[tuple[int, int], StyleRecord] = {}
        self._internal_sizes: list[tuple[int, int]] | None = None
        self._opened = self._open_postprocessing()
        if not self._opened:
            self._scripted_weights = None  # nothing to restore: the bytes need not be kept

    # loading -------------------------------------------------------------------------------------------------
    def _load(self, weights: WeightFile) -> Any:
        name = self.spec.name
        try:
            if self.format == "torchscript":
                return torch.jit.load(io.BytesIO(weights.data), map_location=self.device).eval()
            if self.format == "export":
                return torch.export.load(io.BytesIO(weights.data)).module().to(self.device)
            if self.format == ONNX:
                return self._onnx_session(weights)
        except ModelError:
            raise
        except Exception as error:  # torch raises many types for a bad archive
            raise ModelError(f"model {name}: cannot load {self.spec.file} as a {FORMATS[self.format]}: "
                             f"{error}") from None
        return self._build(weights)

    def _build(self, weights: WeightFile) -> torch.nn.Module:
        name, builder = self.spec.name, self.options.get("builder")
        if builder not in BUILDERS:
            raise ModelError(f"model {name}: {self.spec.file} holds weights (a state_dict), so `builder:` must name "
                             f"the torchvision architecture; got {builder!r}, known: {', '.join(BUILDERS)}")
        if "num_classes" not in self.options:
            raise ModelError(f"model {name}: builder {builder} needs `num_classes:` (background included: "
                             f"{len(self.spec.labels) + 1} for {len(self.spec.labels)} labels)")
        model = getattr(tv_detection, builder)(weights=None, weights_backbone=None,
                                               num_classes=int(self.options["num_classes"]))
        try:
            state = torch.load(io.BytesIO(weights.data), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as error:
            raise ModelError(f"model {name}: {self.spec.file} is not a state_dict of {builder} with num_classes "
                             f"{self.options['num_classes']}: {str(error)[:400]}") from None
        if builder.startswith("maskrcnn"):  # boxes only: no mask head runs (roi_heads.has_mask() is False)
            model.roi_heads.mask_roi_pool = model.roi_heads.mask_head = model.roi_heads.mask_predictor = None
        return model.eval().to(self.device)

    def _onnx_session(self, weights: WeightFile) -> Any:
        """An onnxruntime session on the device's provider; the export must take one [3, H, W] float image."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        session = onnx_session(self.spec.name, weights, options, providers)
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 3 or inputs[0].type != "tensor(float)":
            raise ModelError(f"model {self.spec.name}: {self.spec.file} takes "
                             f"{[(i.name, i.shape, i.type) for i in inputs]}; an ONNX torchvision export takes one "
                             "float image [3, H, W] (export with `torch.onnx.export(model, ([image],), ...)`)")
        return session

    def _calling_contract(self) -> str:
        """torchvision (list of CHW tensors) or perceptionmetrics (one [B, 3, H, W] tensor), from the schema."""
        if self.format == ONNX:
            return ONNX
        if self.format == "state_dict":
            return TORCHVISION
        if self.format == "torchscript":
            schema = str(self.module.forward.schema)
            argument = schema.split("(", 1)[1].split(",")[1] if "," in schema else ""
            if "Tensor[]" in argument:
                return TORCHVISION
            if "Tensor" in argument:
                return PERCEPTIONMETRICS
            raise ModelError(f"model {self.spec.name}: its forward is `{schema}`; the torchvision adapter takes a "
                             "list of CHW tensors (a torchvision detector) or one [B, 3, H, W] tensor "
                             "(PerceptionMetrics' contract)")
        return ""  # a .pt2: found by trying, on the first batch (_call)

    def _open_postprocessing(self) -> bool:
        """Set the detector's thresholds so its output is its candidates; False where they cannot be reached."""
        detector = _detector(self.module) if self.calling == TORCHVISION else None
        if detector is None:
            return False
        heads = _heads(detector)
        try:
            heads.score_thresh = float(self.bound.min_score)
            heads.nms_thresh = 1.0
            heads.detections_per_img = int(self.bound.top_k)
        except (AttributeError, RuntimeError, TypeError):
            return False
        return True

    # the post-processing style -------------------------------------------------------------------------------
    def postprocess_style(self, input_hw: tuple[int, int]) -> StyleRecord:
        """nms_then_cap where the post-processing is open and its coordinates reachable; else frozen."""
        input_hw = (int(input_hw[0]), int(input_hw[1]))
        if input_hw not in self._styles:
            self._styles[input_hw] = self._style_for(input_hw)
        return self._styles[input_hw]

    def _style_for(self, input_hw: tuple[int, int]) -> StyleRecord:
        kind = self.device.type
        if self._opened:
            detector = _detector(self.module)
            with torch.inference_mode():
                internal = tuple(int(n) for n in detector.transform([torch.zeros(3, *input_hw, device=self.device)])[0]
                                 .image_sizes[0])
            if internal == input_hw:
                return StyleRecord(NMS_THEN_CAP, kind)
            if isinstance(detector, torch.nn.Module) and not isinstance(detector, torch.jit.ScriptModule):
                self._report_internal_boxes(detector)
                return StyleRecord(NMS_THEN_CAP, kind, box_map=(internal, input_hw))
            reason = (f"its transform resizes {input_hw[0]}x{input_hw[1]} inputs to {internal[0]}x{internal[1]} and "
                      "runs NMS there, out of reach in a scripted module; letterbox to a size its transform keeps, "
                      "or give a state_dict + builder")
            self._restore_frozen_values(detector)
        elif self.format == "export":
            reason = "a torch.export archive: its thresholds and NMS are constants in the graph"
        elif self.format == ONNX:
            reason = ONNX_FROZEN
        elif self.calling == PERCEPTIONMETRICS:
            reason = "PerceptionMetrics' contract: the wrapper may post-process after the detector"
        else:
            reason = "its thresholds are not reachable attributes of the module"
        return StyleRecord(FROZEN, kind, frozen=self._frozen_values(reason), reason=reason)

    def _report_internal_boxes(self, detector: torch.nn.Module) -> None:
        """Make the transform return boxes where NMS ran (before its resize_boxes), noting each image's size."""
        def keep_internal(result, image_shapes, original_image_sizes):
            self._internal_sizes = [tuple(int(n) for n in size) for size in image_shapes]
            return result

        detector.transform.postprocess = keep_internal

    def _restore_frozen_values(self, detector: Any) -> None:  # noqa: ARG002
        """A scripted model whose NMS stays closed runs with its own values, as saved (undo _open_postprocessing)."""
        if self._scripted_weights is None:
            raise RuntimeError(f"model {self.spec.name}: only a scripted model's post-processing is restored")
        self.module = self._load(self._scripted_weights)
        self._opened, self._scripted_weights = False, None

    def _frozen_values(self, reason: str) -> PostProcess:
        """What a frozen model ran with: `frozen_nms:` in params, else read from the detector's attributes."""
        declared = self.options.get("frozen_nms")
        if declared is not None:
            if not isinstance(declared, Mapping) or set(declared) != {"confidence_threshold", "nms_iou",
                                                                       "max_detections"}:
                raise ModelError(f"model {self.spec.name}: frozen_nms must give confidence_threshold, nms_iou and "
                                 f"max_detections (what the file was saved with), got {declared!r}")
            return PostProcess.from_options(declared)
        if self.format == ONNX:
            raise ModelError(
                f"model {self.spec.name}: {self.spec.file} is {reason}, which cannot be read back; declare the values "
                f"it was exported with as models.{self.spec.name}.options.frozen_nms: {{confidence_threshold: …, "
                "nms_iou: …, max_detections: …}} (a torchvision model's roi_heads.score_thresh, nms_thresh and "
                "detections_per_img, or box_score_thresh, box_nms_thresh, box_detections_per_img given to its builder)")
        detector = _detector(self.module)
        try:
            heads = _heads(detector)
            return PostProcess(float(heads.score_thresh), float(heads.nms_thresh), int(heads.detections_per_img))
        except (AttributeError, RuntimeError, TypeError):
            raise ModelError(
                f"model {self.spec.name}: its post-processing is frozen ({reason}) and the values it runs with "
                f"cannot be read from {self.spec.file}; declare them as models.{self.spec.name}.frozen_nms: "
                "{confidence_threshold: …, nms_iou: …, max_detections: …} so a change can be checked against "
                "them") from None

    # the key -------------------------------------------------------------------------------------------------
    def contract(self) -> dict[str, Any]:
        """Everything besides the file's bytes that changes the candidates; post-processing params are not in it
        (a frozen model's recorded values are: they describe the file)."""
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",  # as ModelAdapter.contract says why
            "framework": self.framework, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "format": self.format, "builder": self.options.get("builder"),
            "num_classes": self.options.get("num_classes"), "device_kind": self.device.type,
            "labels": list(self.spec.labels), "task": self.spec.task, "candidates": asdict(self.bound),
            # the style (open or frozen) follows from the file, the builder and the input size, all in the key
            "frozen_nms": self.options.get("frozen_nms"),
            "pm": self.options.get("pm") or None,
            **_runtime_version(self.format),
        }

    def signature(self) -> Key:
        check_functions_in_closure(self, defining_module(type(self)))  # a function set on this object (a notebook)
        return Key("model", {"weights_sha256": self.weights_sha256, **self.contract()})

    # running -------------------------------------------------------------------------------------------------
    def _inputs(self, batch: np.ndarray) -> torch.Tensor:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[3] != 3 or batch.dtype.kind not in "uif":
            raise ModelError(f"model {self.spec.name}: input {batch.shape} {batch.dtype}; the torchvision adapter "
                             "takes letterboxed arrays (N, H, W, 3), uint8 or float 0-255")
        resize = (self.options.get("pm") or {}).get("resize")
        if resize and (int(resize.get("height", 640)), int(resize.get("width", 640))) != tuple(batch.shape[1:3]):
            raise ModelError(f"model {self.spec.name}: pm_config resize {resize} but the pipeline "
                             f"{self.spec.pipeline} gives {batch.shape[2]}x{batch.shape[1]} letterboxes; set the "
                             "pipeline's resize to match")
        device = self.device if self.format != ONNX else torch.device("cpu")  # onnxruntime takes numpy arrays
        tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2)
        return tensor.to(torch.float32) / 255.0  # ToDtype(float32, scale=True): 0-255 → 0-1

    def _call(self, images: torch.Tensor) -> list[Mapping[str, torch.Tensor]]:
        if not self.calling:  # a .pt2: which contract it was exported with shows when it is called
            failures = []
            for calling in (PERCEPTIONMETRICS, TORCHVISION):
                try:
                    outputs = self._call_as(calling, images)
                except Exception as error:  # noqa: BLE001 - the module decides what a wrong input raises
                    failures.append(f"{calling}: {str(error).splitlines()[0][:200]}")
                    continue
                self.calling = calling
                return outputs
            raise ModelError(f"model {self.spec.name}: {self.spec.file} accepts neither contract ("
                             + "; ".join(failures) + "). Export it taking a list of CHW tensors (torchvision) or "
                             "one [B, 3, H, W] tensor returning a list of dicts (PerceptionMetrics)")
        try:
            return self._call_as(self.calling, images)
        except ModelError:
            raise
        except Exception as error:  # noqa: BLE001 - torch raises many types for an input a module refuses
            raise ModelError(f"model {self.spec.name}: its forward pass ({self.calling} contract) failed on a batch "
                             f"of {tuple(images.shape)}: {str(error).splitlines()[0][:300]}") from None

    def _call_as(self, calling: str, images: torch.Tensor) -> list[Mapping[str, torch.Tensor]]:
        if calling == ONNX:
            return [self._run_onnx(image) for image in images]
        if calling == TORCHVISION:
            outputs = self.module(list(images))
        else:
            norm = (self.options.get("pm") or {}).get("normalization")
            if norm:
                mean = torch.tensor(norm["mean"], dtype=torch.float32, device=images.device)[:, None, None]
                std = torch.tensor(norm["std"], dtype=torch.float32, device=images.device)[:, None, None]
                images = (images - mean) / std
            outputs = self.module(images)
        if isinstance(outputs, tuple) and len(outputs) == 2 and isinstance(outputs[1], list):
            outputs = outputs[1]  # a scripted torchvision detector returns (losses, detections)
        if not isinstance(outputs, (list, tuple)) or len(outputs) != len(images) or not all(
                isinstance(item, Mapping) and {"boxes", "labels", "scores"} <= set(item) for item in outputs):
            raise ModelError(f"model {self.spec.name}: called as {calling}, it returned {type(outputs).__name__}; "
                             "expected one dict of boxes, labels and scores per image")
        return outputs

    def _run_onnx(self, image: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """One image through the ONNX export; its outputs told apart by type and rank, not name: boxes (N, 4)
        float, labels (N,) integer, scores (N,) float (torch.onnx.export names them output_0… unless told)."""
        expected = self.module.get_inputs()[0]
        fixed = [dim for dim in expected.shape[1:] if isinstance(dim, int)]
        if len(fixed) == 2 and tuple(fixed) != tuple(image.shape[1:]):
            raise ModelError(f"model {self.spec.name}: {self.spec.file} was exported for {fixed[1]}x{fixed[0]} "
                             f"inputs but the pipeline {self.spec.pipeline} gives {image.shape[2]}x{image.shape[1]} "
                             "letterboxes; set the pipeline's resize to match, or export with dynamic H and W")
        outputs = self.module.run(None, {expected.name: image.cpu().numpy()})
        found: dict[str, torch.Tensor] = {}
        for array in outputs:
            kind = "boxes" if array.ndim == 2 else "labels" if array.dtype.kind in "iu" else "scores"
            found[kind] = torch.from_numpy(np.asarray(array))
        if len(outputs) != 3 or set(found) != {"boxes", "labels", "scores"} or found["boxes"].shape[-1] != 4:
            raise ModelError(f"model {self.spec.name}: {self.spec.file} returns "
                             f"{[(a.shape, str(a.dtype)) for a in outputs]}; expected a torchvision detector's "
                             "boxes (N, 4), labels (N,) and scores (N,)")
        return found

    def candidates_batch(self, batch: np.ndarray) -> list[Candidates]:
        """Candidates per item: xyxy boxes where the model's NMS runs (model-input pixels unless its style has a
        box_map), scores as the model gives them, labels indexing spec.labels."""
        style = self.postprocess_style(tuple(np.shape(batch)[1:3]))
        images = self._inputs(batch)
        started = time.perf_counter()
        with torch.inference_mode():
            outputs = self._call(images)
        self.forward_seconds += time.perf_counter() - started
        self.forward_passes += len(images)
        if style.box_map is not None and {tuple(style.box_map[0])} != set(self._internal_sizes or []):
            raise ModelError(f"model {self.spec.name}: its transform gave sizes {self._internal_sizes}, expected "
                             f"{style.box_map[0]} for every image")
        return [self._candidates(item) for item in outputs]

    def _candidates(self, item: Mapping[str, torch.Tensor]) -> Candidates:
        boxes = item["boxes"].detach().to("cpu", torch.float32).numpy().astype(np.float64)
        scores = item["scores"].detach().to("cpu", torch.float32).numpy().astype(np.float64)
        classes = item["labels"].detach().to("cpu").numpy().astype(np.int64)
        n_labels = len(self.spec.labels)
        if len(classes) and (classes.min() < 0 or classes.max() > n_labels):
            raise ModelError(f"model {self.spec.name}: predicts classes {sorted(set(classes.tolist()))[:10]}, but "
                             f"{n_labels} labels are declared (class c is labels[c - 1]; 0 is background); "
                             f"fix the labels list or num_classes ({n_labels + 1})")
        # RetinaNet and FCOS score class 0 like any other (trained weights leave it near 0): it stays a candidate
        # (label -1) through NMS and the cap, as in the model, and postprocess drops it afterwards.
        if np.any(np.diff(scores) > 0):  # torchvision sorts; a wrapper may not: the cap needs score order
            order = np.argsort(-scores, kind="stable")
            boxes, scores, classes = boxes[order], scores[order], classes[order]
        if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
            raise ModelError(f"model {self.spec.name}: output contains NaN or inf")
        return Candidates(boxes.reshape(-1, 4), classes - 1, scores)

    def detect_batch(self, batch: np.ndarray) -> list[Detections]:
        """Detections per item (model-input pixels): candidates, then this model's post-processing."""
        style = self.postprocess_style(tuple(np.shape(batch)[1:3]))
        check_style_covers(style, self.bound, self.postprocess, self.spec.name)
        return [model_space_detections(found, self.postprocess, style, self.spec.name, self.bound)
                for found in self.candidates_batch(batch)]
