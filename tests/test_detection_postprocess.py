"""Post-processing from stored candidates gives exactly what decoding + post-processing in one go gave."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import maximum_filter
from scipy.special import expit

from evalstack.config import ModelError
from evalstack.detection.adapter import CandidateBound, PostProcess, centernet_candidates
from evalstack.detection.boxes import Detections, nms, nms_sorted_batch
from evalstack.detection.candidates import CandidateTable
from evalstack.detection.postprocess import postprocess_table, to_original
from evalstack.preprocess.letterbox import PLACEMENT_COLUMNS, LetterboxPipeline


def reference_decode(output: np.ndarray, n_classes: int, input_hw: tuple[int, int], post: PostProcess) -> Detections:
    """The decoder as it was before candidates were stored (commit c0e5b51): threshold first, then the best
    max_detections, then NMS. Kept here as the oracle for "reproduces today's outputs exactly"."""
    output = np.asarray(output, dtype=np.float64)
    heat = expit(output[:n_classes])
    stride_y, stride_x = input_hw[0] / heat.shape[1], input_hw[1] / heat.shape[2]
    peaks = (heat == maximum_filter(heat, size=(1, 3, 3), mode="constant", cval=0.0)) & (heat >= post.confidence_threshold)
    flat = np.flatnonzero(peaks)
    scores = heat.reshape(-1)[flat]
    best = np.argsort(-scores, kind="stable")[: post.max_detections]
    flat, scores = flat[best], scores[best]
    labels, gy, gx = np.unravel_index(flat, heat.shape)
    cx = (gx + expit(output[n_classes, gy, gx])) * stride_x
    cy = (gy + expit(output[n_classes + 1, gy, gx])) * stride_y
    w = np.exp(np.clip(output[n_classes + 2, gy, gx], -8.0, 8.0)) * stride_x
    h = np.exp(np.clip(output[n_classes + 3, gy, gx], -8.0, 8.0)) * stride_y
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    keep = nms(boxes, scores, labels, post.nms_iou)
    return Detections(boxes[keep], labels[keep].astype(np.int64), scores[keep].astype(np.float32))


def _heads(n: int, seed: int, n_classes: int = 3, grid: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    heads = rng.normal(-2.5, 1.5, size=(n, n_classes + 4, grid, grid)).astype(np.float32)
    heads[:, :n_classes] = np.round(heads[:, :n_classes], 1)  # coarse logits: many exact score ties
    heads[0, :n_classes] = -30.0  # an image without any candidate
    return heads


POSTS = [PostProcess(), PostProcess(0.3, 0.6, 20), PostProcess(0.01, 0.3, 100), PostProcess(0.05, 1.0, 3),
         PostProcess(0.2, 0.05, 50), PostProcess(0.99, 0.5, 100)]


@pytest.mark.parametrize("post", POSTS, ids=str)
def test_stored_candidates_reproduce_the_one_pass_decoder_exactly(post: PostProcess):
    heads = _heads(24, seed=1)
    pipeline = LetterboxPipeline(resize=64)
    sizes = [(64 + 7 * i, 40 + 3 * i) for i in range(len(heads))]  # letterbox padding on either axis
    places = [pipeline.placement(w, h) for w, h in sizes]
    found = [centernet_candidates(head, 3, (64, 64), CandidateBound(0.01, 100)) for head in heads]
    rows = {"item_key": [f"{i:064x}" for i in range(len(heads))], "id": np.arange(len(heads)), "split": ["val"] * len(heads),
            **{name: np.asarray([getattr(p, name) for p in places], dtype=np.float64) for name in PLACEMENT_COLUMNS}}
    table = postprocess_table(CandidateTable.build(rows, found), post)
    for i, (head, place) in enumerate(zip(heads, places)):
        expected = to_original(reference_decode(head, 3, (64, 64), post), place)
        got = table.detections(i)
        assert np.array_equal(got.boxes, expected.boxes) and got.boxes.dtype == np.float32
        assert np.array_equal(got.labels, expected.labels) and np.array_equal(got.scores, expected.scores)


def test_the_bound_is_checked_before_post_processing_stored_candidates():
    bound = CandidateBound(min_score=0.05, top_k=50)
    bound.check_covers(PostProcess(0.05, 0.5, 50), "m")
    with pytest.raises(ModelError, match="confidence_threshold 0.01 is below candidates.min_score 0.05"):
        bound.check_covers(PostProcess(0.01, 0.5, 50), "m")
    with pytest.raises(ModelError, match="max_detections 60 exceeds candidates.top_k 50"):
        bound.check_covers(PostProcess(0.05, 0.5, 60), "m")


def test_nms_of_a_sorted_batch_equals_nms_per_image():
    rng = np.random.default_rng(3)
    counts = np.asarray([0, 1, 2, 7, 16, 3])
    width = int(counts.max())
    boxes = np.zeros((len(counts), width, 4))
    labels = np.full((len(counts), width), -1)
    expected = []
    for b, n in enumerate(counts):
        xy = rng.random((n, 2)) * 40
        boxes[b, :n] = np.concatenate([xy, xy + rng.random((n, 2)) * 25 + 1], axis=1)
        labels[b, :n] = rng.integers(0, 2, n)
        scores = np.sort(np.round(rng.random(n), 1))[::-1]  # sorted, with ties
        expected.append(nms(boxes[b, :n], scores, labels[b, :n], 0.4))
    for got, want in zip(nms_sorted_batch(boxes, labels, counts, 0.4), expected):
        assert np.array_equal(got, want)
