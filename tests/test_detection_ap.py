"""`evaluate.ap: coco11` (issue 22, item 6): PerceptionMetrics' AP — VOC 11-point interpolation, mAP@[.5:.95] the
mean of the 11-point APs — computed by pycocotools, equal to PerceptionMetrics' own figures.

The goldens are what `perceptionmetrics==3.1.0` (`utils.detection_metrics.DetectionMetricsFactory`:
`compute_metrics()[-1]["AP"]` at IoU 0.5, `compute_coco_map()`) printed for these sets, fed image by image with
boxes as xyxy and detections in score order. It computes in float32, hence the relative tolerance of 1e-6.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from evalstack.detection.metrics import coco_from_document, evaluate_detections, map_and_map50
from tests.pm_ap_fixture import detection_set

# (seed, integer boxes) → (mAP@.5, mAP@[.5:.95]) as PerceptionMetrics computes them
GOLDENS = {
    (0, False): (0.3280027210712433, 0.12013538181781769),
    (0, True): (0.3357694447040558, 0.12083504348993301),
    (1, False): (0.28554096817970276, 0.11986613273620605),
    (1, True): (0.28554096817970276, 0.1216515302658081),
    (2, False): (0.17614607512950897, 0.04502102732658386),
    (2, True): (0.23338931798934937, 0.0480121374130249),
    (3, False): (0.33015644550323486, 0.11980210244655609),
    (3, True): (0.33015644550323486, 0.11814681440591812),
    (4, False): (0.22575758397579193, 0.08019649982452393),
    (4, True): (0.26681098341941833, 0.08981573581695557),
    (5, False): (0.2879749834537506, 0.09309939295053482),
    (5, True): (0.2879749834537506, 0.09382744878530502),
    (6, False): (0.24921947717666626, 0.11847043037414551),
    (6, True): (0.24921947717666626, 0.11935196816921234),
    (7, False): (0.32381510734558105, 0.12653589248657227),
    (7, True): (0.3191531002521515, 0.1234540194272995),
    (8, False): (0.23335357010364532, 0.060339175164699554),
    (8, True): (0.23335357010364532, 0.06379120796918869),
    (9, False): (0.11769004911184311, 0.04237165302038193),
    (9, True): (0.12406963855028152, 0.04364272207021713),
    (10, False): (0.30168822407722473, 0.10168175399303436),
    (10, True): (0.30168822407722473, 0.09634043276309967),
    (11, False): (0.3691459894180298, 0.1050596833229065),
    (11, True): (0.3691459894180298, 0.11495473235845566),
}


@pytest.mark.parametrize("seed, integer", sorted(GOLDENS), ids=lambda v: str(v))
def test_coco11_equals_perceptionmetrics(seed: int, integer: bool):
    document, results = detection_set(seed, integer)
    stats = evaluate_detections(document, results, ap="coco11").stats
    map50, m_ap = GOLDENS[(seed, integer)]
    assert stats["mAP50"] == pytest.approx(map50, rel=1e-6) and stats["mAP"] == pytest.approx(m_ap, rel=1e-6)
    # the grid's fast path gives the same two figures
    assert map_and_map50(coco_from_document(document), results, ap="coco11") == (stats["mAP"], stats["mAP50"])


def _plain_11_points(document, results) -> float:
    evaluator = COCOeval(coco_from_document(document), coco_from_document(document).loadRes(results), "bbox")
    evaluator.params.recThrs = np.linspace(0, 1, 11)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    return float(evaluator.stats[1])


def test_plain_11_recall_points_are_not_perceptionmetrics():
    """Why coco11 places its thresholds: pycocotools' float64 recall 3/10 misses linspace's 0.30000000000000004,
    PerceptionMetrics' float32 recall reaches it; plain 11 points differ on 8 of these 24 sets, by up to 0.04 mAP@.5."""
    off = {key: abs(_plain_11_points(*detection_set(*key)) - GOLDENS[key][0]) for key in GOLDENS}
    assert max(off.values()) > 0.04 and sum(v > 1e-6 for v in off.values()) == 8


def test_coco_stays_pycocotools_own_and_the_report_names_the_method():
    document, results = detection_set(0)
    coco, coco11 = evaluate_detections(document, results), evaluate_detections(document, results, ap="coco11")
    assert coco.summary()["ap"] == "coco" and coco11.summary()["ap"] == "coco11"
    assert len(coco.pr_curve) == 101 and len(coco11.pr_curve) == 11
    assert coco.stats["mAP"] != coco11.stats["mAP"]
    assert coco11.stats["mAP75"] > -1  # looked up at PerceptionMetrics' 0.7500000000000002
    with pytest.raises(ValueError, match="evaluate.ap 'voc'"):
        evaluate_detections(document, results, ap="voc")
