import hashlib
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from evalstack.cli.verify import verify_layer
from evalstack.config import ModelError, ModelSpec
from evalstack.demo.training.detector import ShapesDetector, export_detector
from evalstack.detection.adapter import PostProcess, decode_centernet, load_detector
from evalstack.detection.boxes import Detections
from evalstack.detection.inference import detect_arrays, infer_detection_layer
from evalstack.detection.layer import open_detections, read_table
from evalstack.detection.perceptionmetrics import CacheReader
from evalstack.preprocess.letterbox import LetterboxPipeline, letterbox_layer
from evalstack.sources.coco import CocoFetchConfig, fetch_coco_layer
from tests.coco_fixture import write_coco
from tests.conftest import store_in

LABELS = ("circle", "square")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("det") / "det.pt2"
    export_detector(ShapesDetector(len(LABELS), width=8).eval(), 32, path)
    return path


def _spec(file: Path, **options) -> ModelSpec:
    return ModelSpec(name="det", file=file, adapter="torch_detection", pipeline="lb32", labels=LABELS, task="detect",
                     options=options, trust=True)  # the test exports it itself


def _peak_map(cells: list[tuple[int, int, int, float, float]], n_classes: int = 2, grid: int = 8) -> np.ndarray:
    """A raw head output with given (class, gy, gx, score, log size) peaks, 4-pixel cells."""
    output = np.full((n_classes + 4, grid, grid), -20.0)
    output[n_classes : n_classes + 2] = 0.0  # centre of the cell
    for label, gy, gx, score, log_size in cells:
        output[label, gy, gx] = np.log(score / (1 - score))
        output[n_classes + 2 : n_classes + 4, gy, gx] = log_size
    return output


def test_decode_applies_threshold_peaks_nms_and_the_detection_cap():
    output = _peak_map([(0, 2, 2, 0.9, np.log(2)), (0, 2, 4, 0.8, np.log(2)), (1, 6, 6, 0.3, 0.0), (0, 6, 1, 0.7, 0.0)])
    found = decode_centernet(output, 2, (32, 32), PostProcess(confidence_threshold=0.5, nms_iou=0.5))
    np.testing.assert_allclose(found.boxes, [[6, 6, 14, 14], [14, 6, 22, 14], [4, 24, 8, 28]])
    assert found.labels.tolist() == [0, 0, 0] and found.scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    # Boxes 8 px wide, 8 px apart: IoU 0; widen them so they overlap and NMS keeps the better one.
    wide = _peak_map([(0, 2, 2, 0.9, np.log(4)), (0, 2, 4, 0.8, np.log(4))])
    assert len(decode_centernet(wide, 2, (32, 32), PostProcess(nms_iou=0.3))) == 1
    assert len(decode_centernet(output, 2, (32, 32), PostProcess(confidence_threshold=0.2, max_detections=2))) == 2
    # A neighbour of a stronger cell is not a peak (CenterNet's 3×3 max-pool suppression).
    assert len(decode_centernet(_peak_map([(0, 3, 3, 0.9, 0.0), (0, 3, 4, 0.8, 0.0)]), 2, (32, 32), PostProcess())) == 1


def test_postprocess_params_are_checked_and_part_of_the_signature(model_file):
    base = load_detector(_spec(model_file))
    stricter = load_detector(_spec(model_file, confidence_threshold=0.3))
    assert base.contract()["postprocess"] == {"confidence_threshold": 0.05, "nms_iou": 0.5, "max_detections": 100}
    assert base.signature().hex != stricter.signature().hex
    with pytest.raises(ModelError, match="nms_iou"):
        load_detector(_spec(model_file, nms_iou=0))
    with pytest.raises(ModelError, match="needs `task: detect`"):
        load_detector(replace(_spec(model_file), task="classify"))


def test_adapter_detects_on_arrays_and_counts_forward_passes(model_file):
    adapter = load_detector(_spec(model_file))
    batch = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3)).astype(np.float32)
    found = adapter.detect_batch(batch)
    assert len(found) == 3 and all(isinstance(d, Detections) for d in found)
    assert adapter.forward_passes == 3 and adapter.contract()["output_format"] == "centernet/1"
    wrong = load_detector(replace(_spec(model_file), labels=("a", "b", "c")))
    with pytest.raises(ModelError, match=r"expected \(3, 7, Gh, Gw\)"):
        wrong.detect_batch(batch)


class _FixedDetector:
    """Stands in for an adapter: one box in model-input pixels per image."""

    def detect_batch(self, batch):
        boxes = np.asarray([[8.0, 16.0, 24.0, 24.0], [0.0, 0.0, 4.0, 4.0]])  # the second lies in the padding
        return [Detections(boxes, np.asarray([1, 0]), np.asarray([0.9, 0.4], np.float32)) for _ in batch]


def test_detect_arrays_maps_boxes_to_original_pixels_and_drops_padding_boxes():
    place = LetterboxPipeline(resize=32).placement(64, 32)  # scale 0.5, 8 px of padding above and below
    found = detect_arrays(_FixedDetector(), np.zeros((1, 32, 32, 3)), [place])[0]
    np.testing.assert_allclose(found.boxes, [[16.0, 16.0, 32.0, 16.0]])
    assert found.boxes.dtype == np.float32 and found.labels.tolist() == [1]


def test_infer_layer_has_a_row_for_every_image(model_file, tmp_path):
    split = write_coco(tmp_path / "src")
    fetch_coco_layer(CocoFetchConfig({"val": split}, shard_size=2), tmp_path / "raw")
    letterbox_layer(tmp_path / "raw", tmp_path / "pre", LetterboxPipeline(resize=32))
    adapter = load_detector(_spec(model_file, confidence_threshold=0.5))
    build = infer_detection_layer(tmp_path / "pre", tmp_path / "det", adapter, batch_size=2)
    table = read_table(open_detections(tmp_path / "det"))
    assert table.ids.tolist() == [1, 2, 3] and build.counts["forward_passes"] == 3
    assert build.index.stats["num_images"] == 3 and build.index.stats["split"] == "val"
    # The seed reader serves the infer stage's layer, tensors read from the layer they were computed on.
    reader = CacheReader(tmp_path / "det", adapter.weights_sha256, tensors=tmp_path / "pre")
    assert reader.read_tensor(2).shape == (3, 32, 32) and reader.read_tensor(2).dtype == np.float32
    infer_detection_layer(tmp_path / "pre", tmp_path / "det2", load_detector(_spec(model_file, confidence_threshold=0.5)))
    digest = lambda d: [hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())]  # noqa: E731
    assert digest(tmp_path / "det") == digest(tmp_path / "det2")  # batch size is not part of the result


def test_letterboxed_and_detection_shards_are_reused_from_the_store(model_file, tmp_path):
    split = write_coco(tmp_path / "src")
    fetch_coco_layer(CocoFetchConfig({"val": split}, shard_size=2), tmp_path / "raw")
    store = store_in(tmp_path / "store")
    pipeline = LetterboxPipeline(resize=32)
    first = letterbox_layer(tmp_path / "raw", tmp_path / "pre", pipeline, store=store)
    again = letterbox_layer(tmp_path / "raw", tmp_path / "pre2", pipeline, store=store)
    assert first.counts["items_computed"] == 3 and again.counts["shards_reused"] == 2 and again.counts["items_computed"] == 0
    adapter = load_detector(_spec(model_file))
    infer_detection_layer(tmp_path / "pre", tmp_path / "det", adapter, store=store)
    reused = infer_detection_layer(tmp_path / "pre", tmp_path / "det2", adapter, store=store)
    assert reused.counts["forward_passes"] == 0 and adapter.forward_passes == 3  # the second build ran nothing
    digest = lambda d: [hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())]  # noqa: E731
    assert digest(tmp_path / "det") == digest(tmp_path / "det2")
    stricter = load_detector(_spec(model_file, confidence_threshold=0.9))
    assert infer_detection_layer(tmp_path / "pre", tmp_path / "det3", stricter, store=store).counts["forward_passes"] == 3


def test_every_detection_profile_layer_passes_verify(model_file, tmp_path):
    split = write_coco(tmp_path / "src")
    fetch_coco_layer(CocoFetchConfig({"val": split}, shard_size=2), tmp_path / "raw")
    letterbox_layer(tmp_path / "raw", tmp_path / "pre", LetterboxPipeline(resize=32))
    infer_detection_layer(tmp_path / "pre", tmp_path / "det", load_detector(_spec(model_file)))
    for layer in ("raw", "pre", "det"):
        assert verify_layer(tmp_path / layer) == []
    raw_shard = tmp_path / "raw" / "00000.h5"
    with h5py.File(raw_shard, "r+") as handle:  # damage one image's bytes: verify names the item
        handle["blob"][10] ^= 0xFF
    assert any("item 0 (id 1" in str(problem) for problem in verify_layer(tmp_path / "raw"))
