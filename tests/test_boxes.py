import numpy as np
import pytest

from evalstack.detection.boxes import Detections, iou_matrix, nms, xywh_to_xyxy, xyxy_to_xywh


def test_iou_of_known_boxes():
    a = np.asarray([[0, 0, 10, 10]], float)
    b = np.asarray([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 8]], float)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0, 0.0]])


def _iou_as_written_before(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """iou_matrix before it was rewritten coordinate by coordinate for speed (np.prod/np.clip form)."""
    top_left = np.maximum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = np.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[..., 2:] - a[..., :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def test_iou_is_bit_for_bit_what_it_was_before_the_speed_up():
    # NMS keeps or drops a box on `iou > threshold`: one changed last bit can change a detection, so the
    # faster form must give the very same float64s, batched (B, M, 4) and plain, degenerate boxes included.
    rng = np.random.default_rng(7)
    corners = rng.uniform(0, 300, (40, 16, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(-8, 60, (40, 16, 2))], axis=-1)  # some inverted
    boxes[0, :4] = boxes[0, 4:8]  # exact duplicates
    boxes[1, :3, 2:] = boxes[1, :3, :2]  # zero-area boxes
    for a, b in ((boxes, boxes), (boxes[3], boxes[5]), (boxes[2, :1], boxes[2])):
        assert iou_matrix(a, b).tobytes() == _iou_as_written_before(a, b).tobytes()


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
