import hashlib
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from evalstack.cli.verify import verify_layer
from evalstack.config import ModelError
from evalstack.detection.adapter import PostProcess, decode_centernet, load_detector
from evalstack.detection.boxes import Detections
from evalstack.detection.inference import detect_arrays
from evalstack.detection.layer import open_detections, read_table
from evalstack.detection.perceptionmetrics import CacheReader
from evalstack.preprocess.letterbox import LetterboxPipeline, letterbox_layer
from evalstack.sources.coco import CocoFetchConfig, fetch_coco_layer
from tests.coco_fixture import write_coco
from tests.conftest import store_in
from tests.detection_helpers import coco_project, export_tiny_detector, infer_and_postprocess
from tests.detection_helpers import spec as _spec


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return export_tiny_detector(tmp_path_factory.mktemp("det") / "det.pt2")


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


def test_postprocess_params_are_checked_and_not_part_of_the_signature(model_file):
    base = load_detector(_spec(model_file))
    stricter = load_detector(_spec(model_file, confidence_threshold=0.3, nms_iou=0.7, max_detections=5))
    assert base.postprocess == PostProcess(0.05, 0.5, 100)
    assert base.contract()["candidates"] == {"min_score": 0.01, "top_k": 100}
    assert base.signature().hex == stricter.signature().hex  # post-processing reruns without a forward pass
    wider = load_detector(_spec(model_file, candidates={"min_score": 0.001, "top_k": 300}))
    assert wider.signature().hex != base.signature().hex  # the candidate bound changes what infer keeps
    with pytest.raises(ModelError, match="nms_iou"):
        load_detector(_spec(model_file, nms_iou=0))
    with pytest.raises(ModelError, match="needs `task: detect`"):
        load_detector(replace(_spec(model_file), task="classify"))
    with pytest.raises(ModelError, match=r"below candidates.min_score 0.01.*lower models.det.candidates.min_score"):
        load_detector(_spec(model_file, confidence_threshold=0.005))
    with pytest.raises(ModelError, match=r"max_detections 200 exceeds candidates.top_k 100"):
        load_detector(_spec(model_file, max_detections=200))
    with pytest.raises(ModelError, match="unknown keys"):
        load_detector(_spec(model_file, candidates={"min_scor": 0.1}))


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
    coco_project(tmp_path)
    adapter = load_detector(_spec(model_file, confidence_threshold=0.5))
    candidates, _ = infer_and_postprocess(tmp_path, adapter)
    table = read_table(open_detections(tmp_path / "det"))
    assert table.ids.tolist() == [1, 2, 3] and candidates.counts["forward_passes"] == 3
    assert candidates.index.stats["forward_passes_by_split"] == {"val": 3}
    assert open_detections(tmp_path / "det").index.stats["num_images"] == 3
    assert open_detections(tmp_path / "det").index.stats["split"] == "val"
    # The seed reader serves the pipeline's layer, tensors read from the layer they were computed on.
    reader = CacheReader(tmp_path / "det", adapter.weights_sha256, tensors=tmp_path / "pre")
    assert reader.read_tensor(2).shape == (3, 32, 32) and reader.read_tensor(2).dtype == np.float32
    np.testing.assert_array_equal(reader.read_tensor(2), load_letterboxed(tmp_path / "pre", 2).transpose(2, 0, 1))
    infer_and_postprocess(tmp_path, load_detector(_spec(model_file, confidence_threshold=0.5)), out="det2")
    digest = lambda d: [hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())]  # noqa: E731
    assert digest(tmp_path / "det") == digest(tmp_path / "det2")  # batch size is not part of the result


def load_letterboxed(directory: Path, image_id: int) -> np.ndarray:
    from evalstack.core.layers import Layer, read_column

    layer = Layer.open(directory)
    for shard in layer.shards:
        with layer.open_shard(shard) as handle:
            ids = read_column(handle, "id").tolist()
            if image_id in ids:
                return read_column(handle, "x")[ids.index(image_id)]
    raise KeyError(image_id)


def test_letterboxed_candidates_and_detection_shards_are_reused_from_the_store(model_file, tmp_path):
    split = write_coco(tmp_path / "src")
    fetch_coco_layer(CocoFetchConfig({"val": split}, shard_size=2), tmp_path / "raw")
    store = store_in(tmp_path / "store")
    pipeline = LetterboxPipeline(resize=32)
    first = letterbox_layer(tmp_path / "raw", tmp_path / "pre", pipeline, store=store)
    again = letterbox_layer(tmp_path / "raw", tmp_path / "pre2", pipeline, store=store)
    assert first.counts["items_computed"] == 3 and again.counts["shards_reused"] == 2 and again.counts["items_computed"] == 0
    adapter = load_detector(_spec(model_file))
    infer_and_postprocess(tmp_path, adapter, store=store)
    candidates, detections = infer_and_postprocess(tmp_path, adapter, out="det2", store=store)
    assert candidates.counts["forward_passes"] == 0 and adapter.forward_passes == 3  # the second build ran nothing
    assert detections.counts["items_computed"] == 0
    digest = lambda d: [hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())]  # noqa: E731
    assert digest(tmp_path / "det") == digest(tmp_path / "det2")
    wider = load_detector(_spec(model_file, candidates={"min_score": 0.001, "top_k": 100}))
    assert infer_and_postprocess(tmp_path, wider, out="det3", store=store)[0].counts["forward_passes"] == 3


def test_every_detection_profile_layer_passes_verify(model_file, tmp_path):
    coco_project(tmp_path)
    infer_and_postprocess(tmp_path, load_detector(_spec(model_file)))
    for layer in ("raw", "pre", "det.cand", "det"):
        assert verify_layer(tmp_path / layer) == []
    raw_shard = tmp_path / "raw" / "00000.h5"
    with h5py.File(raw_shard, "r+") as handle:  # damage one image's bytes: verify names the item
        handle["blob"][10] ^= 0xFF
    assert any("item 0 (id 1" in str(problem) for problem in verify_layer(tmp_path / "raw"))
