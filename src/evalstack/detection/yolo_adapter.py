"""YOLO-layout detectors (`adapter: yolo`): the tensor contract of Ultralytics exports, without Ultralytics.

Ultralytics is AGPL and is never imported: the layout is a tensor contract. A `.onnx` file runs
through onnxruntime (models/adapters/onnx_runtime.py), a `.pt2` (torch.export) or `.pt`
(TorchScript) file through torch (models/adapters/torch_export.py, with its trust rules); both
feed the same input and decode the same output with the functions below, so the two runtimes give
the same candidates.

Input: RGB, NCHW float32 in 0–1 (the letterboxed 0–255 pixels / 255, what Ultralytics'
`preprocess` feeds an exported model). Output, one of two layouts, found from its shape (a probe
with one blank image when the adapter loads) and recorded in the model's contract:

- `raw`: (B, 4 + C, A) for C = len(labels) classes and A anchors: cx, cy, w, h in input pixels,
  then C class scores, already sigmoid (Ultralytics' `Detect` head in export mode). An anchor is a
  candidate when its best class score reaches `candidates.min_score`; it keeps that one class
  (Ultralytics' `multi_label=False` default: one class per anchor, its max, the first on a tie).
  Boxes become xyxy in float32 as Ultralytics' `xywh2xyxy` computes them. Post-processing is
  class-wise NMS, then the best `max_detections` (style `nms_then_cap`, as Ultralytics'
  `non_max_suppression`). Ultralytics sorts and keeps at most `max_nms` (30000) boxes above the
  threshold before NMS; the stored candidates are sorted and bounded by `candidates.top_k`, so
  post-processing them equals Ultralytics run with `max_nms = top_k` (set top_k to 30000 for its
  default; the boxes above the threshold are a prefix of the sorted candidates either way).
- `end2end`: (B, N, 6) rows x1, y1, x2, y2, score, class (YOLOv10/YOLO26-style heads, or an
  export with NMS inside). Ultralytics reads it as `pred[pred[:, 4] > conf][:max_det]`, no NMS.
  The candidates are the rows scoring at least `candidates.min_score`, stably sorted by score
  (the model's own order when it emits them sorted, as those heads do). The model's NMS is frozen:
  post-processing applies none of its own, which is `nms_iou: 1.0` (nothing has IoU above 1), and
  any other `nms_iou` is refused with the reason; `confidence_threshold` and `max_detections`
  stay exact as a filter and a cap of its rows.

`output: raw | end2end` in the model entry is only needed when a shape fits both layouts
(4 + C rows and exactly 6 anchors); otherwise it is checked against the shape.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import numpy as np

from evalstack.config import DETECTION_OUTSIDE_SIGNATURE, ModelError, ModelSpec
from evalstack.core.fingerprint import check_functions_in_closure, defining_module
from evalstack.core.keys import Key
from evalstack.detection.boxes import Candidates
from evalstack.detection.decoding import CandidateBound, PostProcess
from evalstack.detection.styles import FROZEN, NMS_THEN_CAP, StyleRecord, check_style_covers
from evalstack.models.adapters.base import ModelAdapter

OUTPUT_FORMAT = "yolo/1"
INPUT_CONTRACT = "RGB NCHW float32 0-1 (pixels / 255)"
LAYOUTS = ("raw", "end2end")
END2END_FROZEN = "its output is end-to-end [B, N, 6] detections, so the model's NMS (if any) is part of the model"


def yolo_layout(shape: tuple[int, ...], n_classes: int, declared: str | None, model: str) -> str:
    """`raw` or `end2end` for an output of `shape` (batch first); `declared` (the `output:` option) decides a tie."""
    if declared is not None and declared not in LAYOUTS:
        raise ModelError(f"model {model}: output {declared!r} unknown; choose raw or end2end (or leave it out)")
    fits = []
    if len(shape) == 3 and shape[1] == 4 + n_classes:
        fits.append("raw")
    if len(shape) == 3 and shape[2] == 6:
        fits.append("end2end")
    expected = (f"raw (B, {4 + n_classes}, A) for {n_classes} labels: cx, cy, w, h, class scores; "
                "or end2end (B, N, 6): x1, y1, x2, y2, score, class")
    if not fits:
        raise ModelError(f"model {model}: output shape {tuple(shape)} is not a YOLO layout; expected {expected} "
                         "(a YOLOv5-style output with objectness, or a segmentation head, is not this contract)")
    if declared is not None:
        if declared not in fits:
            raise ModelError(f"model {model}: output: {declared} declared, but shape {tuple(shape)} is {fits[0]}")
        return declared
    if len(fits) > 1:
        raise ModelError(f"model {model}: output shape {tuple(shape)} fits both YOLO layouts; "
                         f"say which with `output: raw` or `output: end2end` in models.{model}")
    return fits[0]


def _best_first(scores: np.ndarray, bound: CandidateBound) -> np.ndarray:
    """Indices of scores reaching the floor, best first (ties in given order), at most top_k."""
    scores = np.asarray(scores, dtype=np.float64)  # the floor compares as post-processing does, in float64
    kept = np.flatnonzero(scores >= bound.min_score)
    return kept[np.argsort(-scores[kept], kind="stable")][: bound.top_k]


def xywh_to_xyxy_f32(xywh: np.ndarray) -> np.ndarray:
    """Ultralytics' `xywh2xyxy`, in float32 as it computes it: centre ∓ half the size."""
    xywh = np.asarray(xywh, dtype=np.float32)
    half = xywh[:, 2:4] / np.float32(2)
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)


def raw_candidates(output: np.ndarray, n_classes: int, bound: CandidateBound) -> Candidates:
    """One image's raw head output (4 + C, A) → its candidates, xyxy in model-input pixels."""
    output = np.asarray(output, dtype=np.float32)
    scores = output[4 : 4 + n_classes]
    labels = np.argmax(scores, axis=0)  # the first best class on a tie, as torch's max(1)
    best = scores[labels, np.arange(scores.shape[1])]
    order = _best_first(best, bound)
    boxes = xywh_to_xyxy_f32(output[:4, order].T)
    return Candidates(boxes.astype(np.float64), labels[order].astype(np.int64), best[order].astype(np.float64))


def end2end_candidates(output: np.ndarray, n_classes: int, bound: CandidateBound, model: str) -> Candidates:
    """One image's end-to-end rows (N, 6) → its candidates: the model's detections reaching the floor."""
    output = np.asarray(output, dtype=np.float32)
    order = _best_first(output[:, 4], bound)
    classes = output[order, 5]
    if not np.all((classes == np.round(classes)) & (classes >= 0) & (classes < n_classes)):
        bad = sorted(set(classes[(classes != np.round(classes)) | (classes < 0) | (classes >= n_classes)].tolist()))
        raise ModelError(f"model {model}: end-to-end output has class values {bad[:5]}, not class indices "
                         f"0–{n_classes - 1} of its {n_classes} labels")
    return Candidates(output[order, :4].astype(np.float64), classes.astype(np.int64),
                      output[order, 4].astype(np.float64))


def _runner(spec: ModelSpec) -> ModelAdapter:
    """The runtime for the file: onnxruntime for .onnx, torch (with its trust rules) otherwise."""
    if spec.file.suffix.lower() == ".onnx":
        from evalstack.models.adapters.onnx_runtime import OnnxAdapter

        return OnnxAdapter(spec)
    from evalstack.models.adapters.torch_export import TorchAdapter

    return TorchAdapter(spec)


def layout_style(output: str, bound: CandidateBound) -> StyleRecord:
    """The post-processing style of an output layout (YoloAdapter.postprocess_style says why)."""
    if output == "end2end":
        return StyleRecord(FROZEN, frozen=PostProcess(bound.min_score, 1.0, bound.top_k), reason=END2END_FROZEN)
    return StyleRecord(NMS_THEN_CAP)


def check_layout_covers(output: str, bound: CandidateBound, post: PostProcess, model: str) -> None:
    """What a load refuses of the post-processing options, for a model of this output layout: also checked
    without loading, where evaluate takes the signature from a memo (detection/signatures.py)."""
    bound.check_covers(post, model)
    check_style_covers(layout_style(output, bound), bound, post, model)


class YoloAdapter:
    """A YOLO-layout detector (torch or ONNX file) giving candidates like DetectionAdapter does."""

    def __init__(self, spec: ModelSpec):
        if spec.task != "detect":
            raise ModelError(f"model {spec.name}: adapter yolo needs `task: detect`, not {spec.task!r}")
        options = dict(spec.options)
        declared = options.pop("output", None)
        self.spec = replace(spec, layout="NCHW")  # the Ultralytics tensor contract, whatever the entry says
        self.runner = _runner(self.spec)
        self.runner.options_outside_signature = DETECTION_OUTSIDE_SIGNATURE  # its contract is this detector's
        self.weights_sha256 = self.runner.weights_sha256
        self.postprocess = PostProcess.from_options(options)
        self.bound = CandidateBound.from_options(options)
        self.bound.check_covers(self.postprocess, spec.name)  # before the probe: no work for a refused entry
        self.output = yolo_layout(self._probe_shape(), len(spec.labels), declared, spec.name)
        check_layout_covers(self.output, self.bound, self.postprocess, spec.name)

    def postprocess_style(self, input_hw: tuple[int, int] | None) -> StyleRecord:
        """Raw head output: our class-wise NMS (torchvision's batched_nms), then the cap. End-to-end output: its
        NMS is inside the model, run with nothing suppressed beyond it (IoU 1.0) and our candidate bound, so a
        stricter threshold or cap is exact and another IoU is refused (detection/styles.py)."""
        return layout_style(self.output, self.bound)

    def _probe_shape(self) -> tuple[int, ...]:
        """The output shape for one blank image: a shape, not a result, so it is not counted as a forward pass."""
        blank = np.zeros((1, *self.runner.input_shape()), dtype=np.float32)
        return tuple(np.shape(self.runner._forward(blank)))

    @property
    def forward_passes(self) -> int:
        return self.runner.forward_passes

    @property
    def forward_seconds(self) -> float:
        return self.runner.forward_seconds

    def input_shape(self) -> tuple[int, ...]:
        return self.runner.input_shape()

    def contract(self) -> dict[str, Any]:
        """What the candidates depend on besides the weights; post-processing params are not in it."""
        return {**self.runner.contract(), "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "output_format": OUTPUT_FORMAT, "input": INPUT_CONTRACT,
                "output": self.output, "postprocess_style": FROZEN if self.output == "end2end" else NMS_THEN_CAP,
                "candidates": asdict(self.bound)}

    def signature(self) -> Key:
        check_functions_in_closure(self, defining_module(type(self)))  # a function set on this object (a notebook)
        return Key("model", {"weights_sha256": self.weights_sha256, **self.contract()})

    def raw_batch(self, batch: np.ndarray) -> np.ndarray:
        """The model's output for model-ready arrays (N, H, W, 3) in 0–255 (letterboxed pixels)."""
        scaled = np.asarray(batch).astype(np.float32) / np.float32(255)  # Ultralytics: im.float() / 255
        raw = self.runner.predict_batch(scaled)
        expected = yolo_layout(raw.shape, len(self.spec.labels), self.output, self.spec.name)
        if raw.shape[0] != len(batch) or expected != self.output:
            raise ModelError(f"model {self.spec.name}: output shape {raw.shape} for a batch of {len(batch)}")
        return raw

    def candidates_batch(self, batch: np.ndarray) -> list[Candidates]:
        """Candidates per item, xyxy in model-input pixels, for model-ready arrays (N, H, W, 3)."""
        raw = self.raw_batch(batch)
        n_classes = len(self.spec.labels)
        if self.output == "raw":
            return [raw_candidates(item, n_classes, self.bound) for item in raw]
        return [end2end_candidates(item, n_classes, self.bound, self.spec.name) for item in raw]
