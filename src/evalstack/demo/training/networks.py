"""Demo models, so the template runs end to end with no downloads.

All networks honour PAD's IO contract: input (N, H, W, 3) float32 in 0–255,
no normalisation outside the model, logits over the label list. A
concentration network is, like PAD's, a classifier over quantity levels
(`target: quantity`, labels "0", "20", …). Training is seeded and
deterministic, so `dvc repro -f` rebuilds byte-identical model files.
Real users replace these files with their own (see README).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.kinds import PREPROCESSED_KIND
from evalstack.core.layers import Layer
from evalstack.demo.training import portable_kernels
from evalstack.demo.training.torch_program import save_program
from evalstack.evaluation.classification import label_indices
from evalstack.evaluation.items import read_items
from evalstack.models.adapters.keras_model import canonical_keras_archive

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class TrainConfig:
    framework: str  # keras_tflite | keras | torch_export
    target: str = "sample_name"  # raw-layer column the labels name: sample_name (drug) or quantity
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 0.002
    seed: int = 0
    split: str = "dev"
    max_items: int = 4000  # bounds memory when the dataset is generated at full scale


def load_training_set(
    preprocessed_dir: Path,
    raw_dir: Path,
    labels: tuple[str, ...],
    split: str,
    max_items: int,
    model: str,
    target: str = "sample_name",
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 tensors and label indices of one split (first `max_items` in layer order)."""
    items = read_items(raw_dir)
    layer = Layer.open(preprocessed_dir, kind=PREPROCESSED_KIND)
    items.check_aligned(layer)  # rows are the raw layer's items: truth joins by position, never by content
    chosen = np.flatnonzero(items.split == split)[:max_items]
    truth = items.truth(target)
    tensors, names, start = [], [], 0
    for shard in layer.shards:
        rows = chosen[(chosen >= start) & (chosen < start + shard.n_items)]
        if len(rows):
            with layer.open_shard(shard) as handle:
                tensors.append(handle["x"][rows - start])
            names.extend(truth[rows])
        start += shard.n_items
    if not names:
        raise ValueError(f"no {split!r} items to train {model} on")
    return np.concatenate(tensors), label_indices(names, labels, model)


def fit_keras_cnn(x: np.ndarray, y: np.ndarray, n_classes: int, config: TrainConfig) -> "keras.Model":
    """A tiny seeded CNN (deterministic ops) trained on uint8 tensors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.backend.clear_session()  # layer names come from a per-process counter; they end up in the file
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    height = x.shape[1]
    pool = max(1, height // 56)  # 454 → 56: the barcode is coarse, the network stays tiny
    model = keras.Sequential(
        [
            keras.Input(shape=x.shape[1:], dtype="float32"),
            keras.layers.Rescaling(1.0 / 255),
            keras.layers.AveragePooling2D(pool_size=pool),
            keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(n_classes),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .map(lambda images, labels: (tf.cast(images, tf.float32), labels))
    )
    model.fit(dataset, epochs=config.epochs, verbose=2)
    return model


def train_keras_tflite(x: np.ndarray, y: np.ndarray, n_classes: int, config: TrainConfig, out: Path) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(fit_keras_cnn(x, y, n_classes, config))
    atomic_write_bytes(out, converter.convert())


def train_keras(x: np.ndarray, y: np.ndarray, n_classes: int, config: TrainConfig, out: Path) -> None:
    """A `.keras` archive, rewritten canonically so the same weights give the same bytes."""
    import tempfile

    model = fit_keras_cnn(x, y, n_classes, config)
    with tempfile.TemporaryDirectory() as scratch:
        saved = Path(scratch) / "model.keras"
        model.save(saved)
        atomic_write_bytes(out, canonical_keras_archive(saved.read_bytes()))


def train_torch_export(x: np.ndarray, y: np.ndarray, n_classes: int, config: TrainConfig, out: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    height = x.shape[1]

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            )
            self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(32 * (height // 8) ** 2, n_classes))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            # The same contract as PAD's networks: NHWC float 0–255 in, logits out.
            return self.head(self.features(images.permute(0, 3, 1, 2) / 255.0))

    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total, correct = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            logits = model(inputs[index].float())
            loss = loss_fn(logits, targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
            correct += int((logits.argmax(1) == targets[index]).sum())
        print(f"epoch {epoch + 1}/{config.epochs} loss {total / len(order):.4f} accuracy {correct / len(order):.4f}")
    model.eval()
    example = (torch.zeros((2, *x.shape[1:]), dtype=torch.float32),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    save_program(program, out)


TRAINERS = {"keras_tflite": train_keras_tflite, "keras": train_keras, "torch_export": train_torch_export}


def train_demo_model(
    preprocessed_dir: Path, raw_dir: Path, labels: tuple[str, ...], config: TrainConfig, out: Path, name: str
) -> None:
    if config.framework not in TRAINERS:
        raise ValueError(f"train.{name}: framework {config.framework!r} unknown; choose from {sorted(TRAINERS)}")
    portable_kernels()  # before the trainer imports its framework
    x, y = load_training_set(preprocessed_dir, raw_dir, labels, config.split, config.max_items, name, config.target)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"training {name} ({config.framework}) on {len(x)} {config.split} items, {len(labels)} classes")
    TRAINERS[config.framework](x, y, len(labels), config, out)
