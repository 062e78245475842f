import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logit

from evalstack.demo.training.detector import (
    STRIDE,
    DetectorTrainConfig,
    ShapesDetector,
    TrainingSet,
    _flip,
    centernet_loss,
    encode_targets,
    train_detector,
)
from evalstack.detection.adapter import PostProcess, decode_centernet
from evalstack.detection.boxes import xyxy_to_xywh

BOXES = np.asarray([[4.0, 6.0, 20.0, 12.0], [40.0, 30.0, 10.0, 18.0]])  # xywh in a 64-pixel input
LABELS = np.asarray([1, 0])


def _perfect_output(target: np.ndarray, n_classes: int) -> np.ndarray:
    """Logits that reproduce a target exactly: what a perfectly trained detector would output."""
    output = np.empty((n_classes + 4, *target.shape[1:]))
    output[:n_classes] = logit(np.clip(target[:n_classes], 1e-4, 1 - 1e-4))
    output[n_classes : n_classes + 2] = logit(np.clip(target[n_classes : n_classes + 2], 1e-6, 1 - 1e-6))
    output[n_classes + 2 :] = target[n_classes + 2 : n_classes + 4]
    return output


def test_targets_decode_back_to_the_boxes():
    target = encode_targets(BOXES, LABELS, 2, 64 // STRIDE)
    found = decode_centernet(_perfect_output(target, 2), 2, (64, 64), PostProcess(confidence_threshold=0.5))
    order = np.argsort(found.labels)[::-1]
    np.testing.assert_allclose(xyxy_to_xywh(found.boxes[order]), BOXES, atol=1e-3)
    assert found.labels[order].tolist() == [1, 0]


def test_mirrored_targets_decode_to_mirrored_boxes():
    target = torch.from_numpy(encode_targets(BOXES, LABELS, 2, 64 // STRIDE))[None]
    _, flipped = _flip(torch.zeros(1, 64, 64, 3), target, 2)
    found = decode_centernet(_perfect_output(flipped[0].numpy(), 2), 2, (64, 64), PostProcess(confidence_threshold=0.5))
    mirrored = BOXES.copy()
    mirrored[:, 0] = 64 - BOXES[:, 0] - BOXES[:, 2]
    order = np.argsort(found.labels)[::-1]
    np.testing.assert_allclose(xyxy_to_xywh(found.boxes[order]), mirrored, atol=1e-3)


def test_loss_is_small_for_a_perfect_output_and_large_for_a_blank_one():
    target = torch.from_numpy(encode_targets(BOXES, LABELS, 2, 16))[None]
    perfect = torch.from_numpy(_perfect_output(target[0].numpy(), 2))[None].float()
    assert float(centernet_loss(perfect, target, 2)) < 0.05
    assert float(centernet_loss(torch.zeros_like(perfect), target, 2)) > 1.0


def _tiny_set() -> TrainingSet:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    return TrainingSet(images, [BOXES[:1] / 2] * 6, [LABELS[:1]] * 6)


def test_training_is_byte_deterministic(tmp_path: Path):
    config = DetectorTrainConfig(epochs=1, batch_size=4, width=8)
    digests = []
    for name in ("a.pt2", "b.pt2"):
        train_detector(_tiny_set(), 2, config, tmp_path / name)
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    program = torch.export.load(str(tmp_path / "a.pt2"))
    out = program.module()(torch.zeros(3, 32, 32, 3))
    assert tuple(out.shape) == (3, 6, 8, 8)  # (N, K + 4, H / 4, W / 4)


def test_input_size_must_fit_the_network():
    with pytest.raises(ValueError, match="multiple of 16"):
        train_detector(TrainingSet(np.zeros((1, 40, 40, 3), np.uint8), [BOXES[:0]], [LABELS[:0]]), 2,
                       DetectorTrainConfig(epochs=1), Path("unused.pt2"))
    assert ShapesDetector(3)(torch.zeros(1, 48, 48, 3)).shape == (1, 7, 12, 12)
