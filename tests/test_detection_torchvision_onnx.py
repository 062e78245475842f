"""A torchvision detector exported to ONNX through `adapter: torchvision`: run by onnxruntime exactly as onnxruntime
runs the file, agreeing with the torch model it was exported from, its post-processing frozen at `frozen_nms`."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from evalstack.config import ModelError
from evalstack.demo.torchvision_detector import build_random, export_onnx, frozen_nms
from evalstack.detection.adapter import load_detector
from evalstack.detection.decoding import PostProcess
from evalstack.detection.styles import FROZEN
from evalstack.detection.torchvision_adapter import file_format
from tests.test_detection_torchvision import FRCNN, images, tv_spec
from tests.weights_check import assert_runs_the_bytes_it_hashed

pytestmark = pytest.mark.slow  # ~20 s: two exports of a Faster R-CNN

SIZE = 128
STRICT = PostProcess(0.31, 0.5, 10)  # random weights score 0.29–0.34 here: the threshold and the cap both bite


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """One random-weight Faster R-CNN, exported at its own post-processing values and at STRICT ones."""
    folder = tmp_path_factory.mktemp("tv_onnx")
    model = build_random(FRCNN, 4, seed=1)
    loose = export_onnx(model, folder / "frcnn.weights", SIZE)  # the content decides what it is, not the suffix
    values = frozen_nms(model)
    heads = model.roi_heads
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img = (STRICT.confidence_threshold, STRICT.nms_iou,
                                                                      STRICT.max_detections)
    strict = export_onnx(model, folder / "strict.onnx", SIZE)
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img = (values["confidence_threshold"],
                                                                      values["nms_iou"], values["max_detections"])
    return {"model": model, "loose": loose, "strict": strict, "frozen_nms": values}


def ort_run(file: Path, batch: np.ndarray) -> list[list[np.ndarray]]:
    """onnxruntime run directly on the file, image by image: [boxes, labels, scores] each."""
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    return [session.run(None, {"image": torch.from_numpy(item).permute(2, 0, 1).float().numpy() / 255.0})
            for item in batch]


def test_candidates_equal_onnxruntime_on_the_file_and_agree_with_the_torch_model(exported):
    adapter = load_detector(replace(tv_spec(exported["loose"], frozen_nms=exported["frozen_nms"]), trust=False))
    assert adapter.format == file_format(exported["loose"]) == "onnx"  # data: no trust or sha256 asked for
    style = adapter.postprocess_style((SIZE, SIZE))
    assert style.style == FROZEN and "ONNX export" in style.reason
    assert style.frozen == PostProcess(0.05, 0.5, 100)  # torchvision's defaults, as declared
    batch = images(4, SIZE, seed=3)
    found = adapter.candidates_batch(batch)
    assert adapter.forward_passes == 4
    for cand, (boxes, labels, scores) in zip(found, ort_run(exported["loose"], batch)):
        assert len(scores) == 100  # a real output, capped as the model caps it
        assert np.array_equal(cand.boxes, boxes) and np.array_equal(cand.scores, scores)
        assert np.array_equal(cand.labels, labels - 1)
    with torch.inference_mode():
        reference = exported["model"]([torch.from_numpy(item).permute(2, 0, 1).float() / 255.0 for item in batch])
    for cand, ref in zip(found, reference):
        # The same detections as the torch model, as a set: onnxruntime's kernels round differently from torch's
        # (measured on these images: boxes within 0.014 px, scores within 8e-5), so near-equal scores may swap.
        assert sorted(cand.labels) == sorted(ref["labels"].numpy() - 1)
        for box, label, score in zip(ref["boxes"].numpy(), ref["labels"].numpy() - 1, ref["scores"].numpy()):
            distance = np.abs(cand.boxes - box).max(axis=1) + np.where(cand.labels == label, 0.0, np.inf)
            nearest = int(np.argmin(distance))
            assert distance[nearest] <= 0.05 and abs(cand.scores[nearest] - score) <= 2e-4


def test_a_stricter_threshold_is_exact_and_an_nms_change_is_refused(exported):
    stricter = load_detector(tv_spec(exported["loose"], frozen_nms=exported["frozen_nms"],
                                     confidence_threshold=STRICT.confidence_threshold, nms_iou=STRICT.nms_iou,
                                     max_detections=STRICT.max_detections))
    batch = images(4, SIZE, seed=3)
    kept = []
    for found, (boxes, labels, scores) in zip(stricter.detect_batch(batch), ort_run(exported["strict"], batch)):
        # the loose export filtered after the fact equals the model exported at the stricter values
        assert np.array_equal(found.boxes, boxes) and np.array_equal(found.scores, scores)
        assert np.array_equal(found.labels, labels - 1)
        kept.append(len(scores))
    assert 0 < min(kept) < 10 == max(kept)  # the threshold cut some images, the cap another
    for changed, said in (({"nms_iou": 0.6}, "nms_iou 0.6"), ({"max_detections": 101}, "more detections")):
        adapter = load_detector(tv_spec(exported["loose"], frozen_nms=exported["frozen_nms"], **changed))
        with pytest.raises(ModelError, match=rf"frozen \(an ONNX export: its thresholds and NMS are constants.*{said}"):
            adapter.detect_batch(batch[:1])


def test_onnxruntime_runs_the_bytes_the_signature_hashed(exported, tmp_path, monkeypatch):
    batch = images(1, SIZE)
    assert_runs_the_bytes_it_hashed(tv_spec(exported["loose"], frozen_nms=exported["frozen_nms"]), load_detector,
                                    lambda model: [column for found in model.candidates_batch(batch)
                                                   for column in (found.boxes, found.labels, found.scores)],
                                    exported["strict"].read_bytes(), monkeypatch, tmp_path)


def test_clear_errors_before_any_work(exported, tmp_path):
    with pytest.raises(ModelError, match=r"declare the values it was exported with as "
                                         r"models.tv.options.frozen_nms: \{confidence_threshold"):
        load_detector(tv_spec(exported["loose"]))
    adapter = load_detector(tv_spec(exported["loose"], frozen_nms=exported["frozen_nms"]))
    with pytest.raises(ModelError, match="exported for 128x128 inputs but the pipeline lb gives 96x96 letterboxes"):
        adapter.candidates_batch(images(1, 96))
    with pytest.raises(ModelError, match="sha256"):
        load_detector(replace(tv_spec(exported["loose"], frozen_nms=exported["frozen_nms"]), sha256="0" * 64))
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ModelError, match="device 'cuda' asked for, but onnxruntime has no CUDAExecutionProvider"):
            load_detector(tv_spec(exported["loose"], frozen_nms=exported["frozen_nms"], device="cuda"))
    pickle = tmp_path / "model.onnx"  # a pickle named .onnx is a pickle: the trust rule applies
    torch.save({}, str(pickle), _use_new_zipfile_serialization=False)
    assert file_format(pickle) == "state_dict"
    with pytest.raises(ModelError, match="neither pins its `sha256:` nor says `trust: true`"):
        load_detector(replace(tv_spec(pickle, frozen_nms=exported["frozen_nms"]), trust=False))
