"""The evaluate stage's library path on the hand-made fixture: layers in, files out, pycocotools agrees."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from evalstack.config import ModelError, ModelSpec
from evalstack.core.keys import Key
from evalstack.core.kinds import DETECTIONS_KIND
from evalstack.core.layers import CacheStaleError, Layer, LayerWriter
from evalstack.detection.boxes import Detections
from evalstack.detection.evaluation import DetectionOutputs, evaluate_detector, write_detection_outputs
from evalstack.detection.layer import DetectionTable, layer_stats, write_detections_shard
from evalstack.sources.coco import CocoFetchConfig, fetch_coco_layer
from tests.coco_fixture import write_coco
from tests.test_detection_metrics import A, B, pycocotools_directly

SPEC = ModelSpec(name="m", file=Path("unused"), adapter="torch_detection", pipeline="p", labels=("square", "circle"))
KEY = Key("detections", {"candidates": {"model": {"weights_sha256": "ab" * 32}}, "postprocess": {"nms_iou": 0.5}})


def _found(boxes: list, labels: list, scores: list) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
                      np.asarray(scores, np.float32))


def _layers(tmp_path: Path, per_image: list[Detections], ids: tuple[int, ...] = (1, 2, 3)) -> tuple[Path, Path]:
    split = write_coco(tmp_path / "src")
    fetch_coco_layer(CocoFetchConfig({"val": split}), tmp_path / "raw")
    writer = LayerWriter(tmp_path / "det", DETECTIONS_KIND, KEY)
    keys = Layer.open(tmp_path / "raw").item_keys().astype("S64")[: len(ids)]
    write_detections_shard(writer, "00000.h5", DetectionTable.from_detections(keys, list(ids), ["val"] * len(ids), per_image))
    writer.stats = {**layer_stats("m", "val", "ab" * 32, 3), "forward_passes": 3, "forward_passes_by_split": {"val": 3}}
    writer.finish()
    return tmp_path / "raw", tmp_path / "det"


def _outputs(root: Path) -> DetectionOutputs:
    return DetectionOutputs(root / "m.json", root / "ap.csv", root / "pr.csv", root / "per_image.csv", root / "dt.json",
                            root / "details.json")


def test_stage_metrics_equal_pycocotools_on_the_source_json(tmp_path: Path):
    # circle (label 1): both boxes found, plus a confident false positive on the empty image;
    # square (label 0): nothing found on image 2, so image 2 is a zero-detection image.
    per_image = [_found([A, B], [1, 1], [0.9, 0.8]), _found([], [], []), _found([[0, 0, 10, 10]], [1], [0.95])]
    raw, det = _layers(tmp_path, per_image)
    write_detection_outputs(evaluate_detector(raw, det, SPEC, KEY, "val"), "val", _outputs(tmp_path / "out"))
    metrics = json.loads((tmp_path / "out/m.json").read_text())
    details = json.loads((tmp_path / "out/details.json").read_text())
    direct = pycocotools_directly(tmp_path, json.loads((tmp_path / "out/dt.json").read_text()))
    # `dvc metrics show` stays one short row: the headline figures, how AP was computed, which categories count
    assert sorted(metrics) == ["AR100", "ap", "forward_passes", "mAP", "mAP50", "model_lacks"]
    assert (metrics["ap"], metrics["model_lacks"]) == ("coco", "")
    assert details["categories"] == {"mode": "dataset", "scored": ["circle", "square"], "model_lacks": [],
                                     "model_classes_not_in_dataset": []}
    assert metrics["mAP"] == direct[0] and metrics["mAP50"] == direct[1] and metrics["AR100"] == direct[8]
    assert [details[name] for name in ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR1",
                                       "AR10", "AR100", "AR_small", "AR_medium", "AR_large")] == direct
    assert metrics["mAP"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-12)  # circle 2/3, square 0
    assert details["per_class_AP"] == {"circle": pytest.approx(2 / 3, abs=1e-12), "square": 0.0}
    assert (details["tp"], details["fp"], details["fn"]) == (2, 1, 1) and metrics["forward_passes"] == 3
    assert details["forward_passes_by_split"] == {"val": 3}
    rows = list(csv.DictReader((tmp_path / "out/per_image.csv").open()))
    assert [(r["image_id"], r["n_gt"], r["n_det"], r["tp"], r["fp"], r["fn"]) for r in rows] == [
        ("1", "2", "2", "2", "0", "0"), ("2", "1", "0", "0", "0", "1"), ("3", "0", "1", "0", "1", "0"),
    ]
    assert details["n_images_without_gt"] == 1 and details["n_images_without_detections"] == 1
    assert (tmp_path / "out/ap.csv").read_text().startswith("class,AP,AP50\n")


def test_images_without_detections_counts_images_with_none_at_all(tmp_path: Path):
    # image 1: two low-scoring boxes (under count_threshold 0.5); image 2: none; image 3: one confident box
    per_image = [_found([A, B], [1, 1], [0.2, 0.1]), _found([], [], []), _found([[0, 0, 10, 10]], [1], [0.95])]
    raw, det = _layers(tmp_path, per_image)
    write_detection_outputs(evaluate_detector(raw, det, SPEC, KEY, "val"), "val", _outputs(tmp_path / "out"))
    details = json.loads((tmp_path / "out/details.json").read_text())
    assert details["n_images_without_detections"] == 1  # what the name says: image 2
    assert details["n_images_without_detections_above_count_threshold"] == 2  # images 1 and 2


def test_detections_from_another_model_or_threshold_are_refused(tmp_path: Path):
    raw, det = _layers(tmp_path, [_found([], [], [])] * 3)
    other = Key("detections", {**KEY.parts, "postprocess": {"nms_iou": 0.5, "confidence_threshold": 0.3}})
    with pytest.raises(CacheStaleError, match="postprocess.confidence_threshold: added"):
        evaluate_detector(raw, det, SPEC, other, "val")
    evaluation = evaluate_detector(raw, det, SPEC, KEY, "val")
    assert evaluation.results == [] and evaluation.report.stats["mAP"] == 0.0


def test_unknown_labels_and_missing_images_are_refused(tmp_path: Path):
    raw, det = _layers(tmp_path, [_found([], [], [])] * 3)
    with pytest.raises(Exception, match=r"labels 0 → 'star': not categories of the dataset \(1: circle"):
        evaluate_detector(raw, det, ModelSpec("m", Path("x"), "a", "p", ("star",)), KEY, "val")
    with pytest.raises(Exception, match="no images in split 'test'"):
        evaluate_detector(raw, det, SPEC, KEY, "test")
    short_raw, short_det = _layers(tmp_path / "short", [_found([], [], [])] * 2, ids=(1, 2))
    with pytest.raises(ModelError, match=r"lacks 1 val images \(e.g. \[3\]\)"):
        evaluate_detector(short_raw, short_det, SPEC, KEY, "val")
