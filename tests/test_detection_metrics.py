"""pycocotools through evalstack on a hand-made fixture whose AP is known by hand."""
import contextlib
import io
import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from evalstack.detection.metrics import evaluate_detections
from tests.coco_fixture import document

A, B, C = [10.0, 10.0, 20.0, 20.0], [36.0, 20.0, 20.0, 20.0], [0.0, 0.0, 30.0, 30.0]


def det(image_id: int, category_id: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


PERFECT = [det(1, 1, A, 0.9), det(1, 1, B, 0.8), det(2, 2, C, 0.7)]
HIGH_FP = [*PERFECT, det(3, 1, [0.0, 0.0, 10.0, 10.0], 0.95)]  # a confident false positive on the empty image
LOW_FP = [*PERFECT, det(3, 1, [0.0, 0.0, 10.0, 10.0], 0.3)]
LOOSE = [det(1, 1, A, 0.9), det(1, 1, B, 0.8), det(2, 2, [0.0, 0.0, 30.0, 19.0], 0.7)]  # IoU 570/900 ≈ 0.633
MISSED = [det(1, 1, A, 0.9), det(2, 2, C, 0.7)]


def pycocotools_directly(tmp_path: Path, results: list[dict]) -> list[float]:
    """The reference: pycocotools on JSON files, nothing of evalstack involved."""
    (tmp_path / "gt.json").write_text(json.dumps(document()))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "gt.json"))
        evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


@pytest.mark.parametrize(
    "results, m_ap, m_ap50, ap_circle, ap_square",
    [
        (PERFECT, 1.0, 1.0, 1.0, 1.0),
        (HIGH_FP, 5 / 6, 5 / 6, 2 / 3, 1.0),  # circle precision is 2/3 at every recall level
        (LOW_FP, 1.0, 1.0, 1.0, 1.0),  # ranked below every true positive: costs no AP
        (LOOSE, 0.65, 1.0, 1.0, 0.3),  # the square matches at IoU .50, .55, .60: 3 of 10 thresholds
        (MISSED, (51 / 101 + 1) / 2, (51 / 101 + 1) / 2, 51 / 101, 1.0),  # recall 0.5 covers 51 of 101 levels
    ],
)
def test_known_ap_and_exact_agreement_with_pycocotools(tmp_path, results, m_ap, m_ap50, ap_circle, ap_square):
    report = evaluate_detections(document(), results)
    assert list(report.stats.values()) == pycocotools_directly(tmp_path, results)  # exactly, every statistic
    assert report.stats["mAP"] == pytest.approx(m_ap, abs=1e-12)
    assert report.stats["mAP50"] == pytest.approx(m_ap50, abs=1e-12)
    assert report.per_class_ap["circle"] == pytest.approx(ap_circle, abs=1e-12)
    assert report.per_class_ap["square"] == pytest.approx(ap_square, abs=1e-12)


def test_per_image_counts_include_zero_gt_and_zero_detection_images():
    counts = {c.image_id: c for c in evaluate_detections(document(), HIGH_FP).per_image}
    assert [(c.n_gt, c.n_det, c.tp, c.fp, c.fn) for c in counts.values()] == [(2, 2, 2, 0, 0), (1, 1, 1, 0, 0), (0, 1, 0, 1, 0)]
    missed = {c.image_id: c for c in evaluate_detections(document(), MISSED[:1]).per_image}
    assert (missed[1].tp, missed[1].fn) == (1, 1)
    assert (missed[2].n_gt, missed[2].n_det, missed[2].fn) == (1, 0, 1)  # no detections: all its GT missed
    assert (missed[3].n_gt, missed[3].n_det) == (0, 0)  # neither: still a row


def test_count_threshold_only_changes_what_is_counted():
    strict, loose = evaluate_detections(document(), LOW_FP, 0.5), evaluate_detections(document(), LOW_FP, 0.2)
    assert strict.stats == loose.stats
    assert strict.summary()["fp"] == 0 and loose.summary()["fp"] == 1
    # IoU 0.633 is a match at 0.5: the loose square counts as a true positive.
    assert evaluate_detections(document(), LOOSE).summary()["tp"] == 3


def test_no_detections_at_all_score_zero():
    report = evaluate_detections(document(), [])
    assert report.stats["mAP"] == 0.0 and report.stats["AR100"] == 0.0
    summary = report.summary()
    assert (summary["tp"], summary["fp"], summary["fn"]) == (0, 0, 3)
    assert summary["n_images_without_detections_above_count_threshold"] == 3 and summary["n_images_without_gt"] == 1


def test_classes_without_ground_truth_have_no_ap():
    doc = document(categories=[*document()["categories"], {"id": 7, "name": "star", "supercategory": "shape"}])
    report = evaluate_detections(doc, PERFECT)
    assert report.per_class_ap["star"] is None and report.stats["mAP"] == 1.0
    assert len(report.pr_curve) == 101 and report.pr_curve[-1] == pytest.approx((1.0, 1.0))


def test_the_callers_results_are_left_as_they_were():
    # loadRes adds keys (area, id, iscrowd, segmentation) to the dicts it gets: evaluation copies each dict, so
    # the results a stage writes out afterwards are the ones it made, and evaluating them twice gives one answer.
    import copy

    results = copy.deepcopy(HIGH_FP)
    first = evaluate_detections(document(), results)
    assert results == HIGH_FP and all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in results)
    assert evaluate_detections(document(), results).stats == first.stats
