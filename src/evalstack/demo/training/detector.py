"""The demo detector: a small CenterNet-style network trained on the letterboxed shapes.

A patchify stem (stride 4) and two downsampling stages, then two upsampling
steps with skip connections back to stride 4, end in a 1×1 head with the
output contract of `detection/adapter.py` (class heatmaps, centre offsets,
log sizes). Training follows CenterNet: Gaussian heatmap targets with the
penalty-reduced focal loss, L1 on offsets and log sizes at object centres.
It is seeded and deterministic (`torch.use_deterministic_algorithms`), and the
export goes through torch.export into an in-memory buffer, so `dvc repro -f`
rebuilds a byte-identical `.pt2`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from evalstack.core.kinds import PREPROCESSED_KIND
from evalstack.core.layers import Layer, read_column
from evalstack.demo.training import one_thread_torch, portable_torch_kernels
from evalstack.demo.training.torch_program import save_program
from evalstack.preprocess.letterbox import PLACEMENT_COLUMNS, placements
from evalstack.sources.coco import read_ground_truth

STRIDE = 4


@dataclass(frozen=True)
class DetectorTrainConfig:
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 0.004
    seed: int = 0
    split: str = "train"
    max_items: int = 4000  # bounds memory at full scale
    width: int = 16  # channels of the stride-4 features; deeper stages use 2× and 4×


@dataclass(frozen=True)
class TrainingSet:
    images: np.ndarray  # (N, S, S, 3) uint8 letterboxed
    boxes: list[np.ndarray]  # per image (n, 4) xywh in model-input pixels
    labels: list[np.ndarray]  # per image (n,) index into the model's label list


def load_training_set(preprocessed_dir: Path, raw_dir: Path, labels: tuple[str, ...], split: str,
                      max_items: int, model: str) -> TrainingSet:
    """Letterboxed images of one split and their non-crowd boxes mapped into the model input."""
    dataset = read_ground_truth(raw_dir)
    truth = {(image.split, image.image_id): image.truth for image in dataset.images}
    label_of = {int(c): i for i, c in enumerate(dataset.category_ids(labels, model))}
    layer = Layer.open(preprocessed_dir, kind=PREPROCESSED_KIND)
    images, boxes, classes = [], [], []
    for shard in layer.shards:
        with layer.open_shard(shard) as handle:
            columns = {name: read_column(handle, name) for name in ("id", "split", *PLACEMENT_COLUMNS)}
            rows = [i for i, s in enumerate(columns["split"]) if s == split][: max_items - len(boxes)]
            if not rows:
                continue
            images.append(handle["x"][np.asarray(rows)])
            placed = placements(columns)
            for row in rows:
                gt = truth[(split, int(columns["id"][row]))]
                keep = (gt.iscrowd == 0) & np.isin(gt.category, list(label_of))
                boxes.append(placed[row].to_input(gt.bbox[keep]))
                classes.append(np.asarray([label_of[int(c)] for c in gt.category[keep]], dtype=np.int64))
        if len(boxes) >= max_items:
            break
    if not boxes:
        raise ValueError(f"no {split!r} images to train {model} on")
    return TrainingSet(np.concatenate(images), boxes, classes)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ShapesDetector(nn.Module):
    def __init__(self, n_classes: int, width: int = 16):
        super().__init__()
        c4, c8, c16 = width, 2 * width, 4 * width
        self.stem = nn.Sequential(nn.Conv2d(3, c4, 4, 4, bias=False), nn.BatchNorm2d(c4), nn.ReLU(inplace=True),
                                  _conv(c4, c4))
        self.down8 = nn.Sequential(_conv(c4, c8, 2), _conv(c8, c8))
        self.down16 = nn.Sequential(_conv(c8, c16, 2), _conv(c16, c16))
        self.up8 = _conv(c16 + c8, c8)
        self.up4 = _conv(c8 + c4, c4)
        self.head = nn.Conv2d(c4, n_classes + 4, 1)
        with torch.no_grad():  # start with a low objectness prior, as CenterNet does
            self.head.bias[:n_classes].fill_(-2.19)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # evalstack's model contract: NHWC float 0–255 in.
        f4 = self.stem(images.permute(0, 3, 1, 2) / 255.0)
        f8 = self.down8(f4)
        f16 = self.down16(f8)
        y = self.up8(torch.cat([F.interpolate(f16, scale_factor=2.0, mode="nearest"), f8], 1))
        y = self.up4(torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), f4], 1))
        return self.head(y)


def encode_targets(boxes: np.ndarray, labels: np.ndarray, n_classes: int, grid: int) -> np.ndarray:
    """Training target (K + 5, G, G): Gaussian heatmaps, offset, log size, centre mask.

    `boxes` are xywh in model-input pixels.
    """
    target = np.zeros((n_classes + 5, grid, grid), dtype=np.float32)
    ys, xs = np.mgrid[0:grid, 0:grid].astype(np.float32)
    for (x, y, w, h), label in zip(np.asarray(boxes, np.float64), labels):
        if w <= 0 or h <= 0:
            continue
        cx, cy = (x + w / 2) / STRIDE, (y + h / 2) / STRIDE
        gx, gy = min(int(cx), grid - 1), min(int(cy), grid - 1)
        sigma_x, sigma_y = max(w / STRIDE / 6, 0.5), max(h / STRIDE / 6, 0.5)
        blob = np.exp(-((xs - gx) ** 2) / (2 * sigma_x**2) - ((ys - gy) ** 2) / (2 * sigma_y**2))
        np.maximum(target[label], blob, out=target[label])
        target[label, gy, gx] = 1.0
        target[n_classes:n_classes + 4, gy, gx] = (cx - gx, cy - gy, math.log(w / STRIDE), math.log(h / STRIDE))
        target[n_classes + 4, gy, gx] = 1.0
    return target


def centernet_loss(output: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    logits, heat = output[:, :n_classes], target[:, :n_classes]
    positive = heat.eq(1.0).float()
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    focal = -(positive * (1 - p) ** 2 * log_p + (1 - positive) * (1 - heat) ** 4 * p**2 * log_not_p).sum()
    mask = target[:, n_classes + 4 : n_classes + 5]
    n_objects = mask.sum().clamp(min=1.0)
    offset = (torch.sigmoid(output[:, n_classes : n_classes + 2]) - target[:, n_classes : n_classes + 2]).abs()
    size = (output[:, n_classes + 2 : n_classes + 4] - target[:, n_classes + 2 : n_classes + 4]).abs()
    return (focal + (offset * mask).sum() + (size * mask).sum()) / n_objects


def _flip(images: torch.Tensor, targets: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror left–right; the in-cell x offset of a mirrored centre becomes 1 − offset."""
    images, targets = images.flip(2), targets.flip(3).clone()
    mask = targets[:, n_classes + 4] > 0
    targets[:, n_classes][mask] = 1.0 - targets[:, n_classes][mask]
    return images, targets


def train_detector(data: TrainingSet, n_classes: int, config: DetectorTrainConfig, out: Path) -> None:
    one_thread_torch()
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    size = data.images.shape[1]
    if size % (4 * STRIDE):
        raise ValueError(f"detector input size {size} must be a multiple of {4 * STRIDE}")
    grid = size // STRIDE
    targets = torch.from_numpy(np.stack([encode_targets(b, l, n_classes, grid) for b, l in zip(data.boxes, data.labels)]))
    images = torch.from_numpy(data.images)
    model = ShapesDetector(n_classes, config.width)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    steps = config.epochs * math.ceil(len(images) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=max(steps, 1))
    generator = torch.Generator().manual_seed(config.seed)
    with portable_torch_kernels():  # oneDNN would make the weights depend on the CPU, even capped at AVX2
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(len(images), generator=generator)
            total = 0.0
            for start in range(0, len(order), config.batch_size):
                index = order[start : start + config.batch_size]
                batch, target = images[index].float(), targets[index]
                if torch.rand((), generator=generator) < 0.5:
                    batch, target = _flip(batch, target, n_classes)
                loss = centernet_loss(model(batch), target, n_classes)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(index)
            print(f"epoch {epoch + 1}/{config.epochs} loss {total / len(order):.4f}")
    export_detector(model.eval(), size, out)


def export_detector(model: nn.Module, size: int, out: Path) -> None:
    example = (torch.zeros((2, size, size, 3), dtype=torch.float32),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    save_program(program, out)
