import numpy as np
import pytest

from evalstack.detection.boxes import Detections, iou_matrix, nms, xywh_to_xyxy, xyxy_to_xywh


def test_iou_of_known_boxes():
    a = np.asarray([[0, 0, 10, 10]], float)
    b = np.asarray([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 8]], float)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0, 0.0]])


def test_xywh_round_trip():
    boxes = np.asarray([[1.5, 2.0, 10.0, 4.0]])
    np.testing.assert_array_equal(xywh_to_xyxy(boxes), [[1.5, 2.0, 11.5, 6.0]])
    np.testing.assert_array_equal(xyxy_to_xywh(xywh_to_xyxy(boxes)), boxes)


def test_nms_is_class_wise_and_suppresses_only_above_the_threshold():
    boxes = np.asarray([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 10], [0, 0, 10, 5], [50, 50, 60, 60]], float)
    scores = np.asarray([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.asarray([0, 0, 1, 0, 0])
    # box 1 overlaps box 0 at IoU 0.9 (same class: gone); box 2 is another class (kept);
    # box 3 overlaps box 0 at exactly 0.5, which torchvision's rule (IoU > threshold) keeps.
    assert nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3, 4]
    assert nms(boxes, scores, labels, 0.49).tolist() == [0, 2, 4]


def test_nms_breaks_score_ties_by_input_order():
    boxes = np.asarray([[0, 0, 10, 10], [1, 0, 11, 10]], float)
    assert nms(boxes, np.asarray([0.5, 0.5]), np.zeros(2, int), 0.5).tolist() == [0]
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).tolist() == []


def test_detections_refuse_mismatched_lengths():
    assert len(Detections.empty()) == 0
    with pytest.raises(ValueError, match="disagree"):
        Detections(np.zeros((2, 4)), np.zeros(1, np.int64), np.zeros(2))
