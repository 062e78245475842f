"""Demo models, so the template runs end to end with no downloads.

All networks honour PAD's IO contract: input (N, H, W, 3) float32 in 0–255,
no normalisation outside the model, logits over the label list. A
concentration network is, like PAD's, a classifier over quantity levels
(`target: quantity`, labels "0", "20", …). Training is seeded and
deterministic, so `dvc repro -f` rebuilds byte-identical model files. The
rows are read from the preprocessed layer a batch at a time (`rows.py`), in the
order the in-memory dataset used to give, so memory does not grow with the data.
Real users replace these files with their own (see README).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from evalstack.core.atomic import atomic_write_bytes
from evalstack.demo.training import one_thread_tensorflow, one_thread_torch, portable_kernels, portable_torch_kernels
from evalstack.demo.training.rows import RowReader, TrainingRows, training_rows
from evalstack.demo.training.torch_program import save_program
from evalstack.models.adapters.keras_model import canonical_keras_archive

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


@dataclass(frozen=True)
class TrainConfig:
    framework: str  # keras_tflite | keras | torch_export
    target: str = "sample_name"  # raw-layer column the labels name: sample_name (drug) or quantity
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 0.002
    seed: int = 0
    split: str = "dev"
    max_items: int = 4000  # bounds training time at full scale (memory holds a batch, whatever the count)


def keras_cnn(item_shape: tuple[int, ...], n_classes: int, config: TrainConfig) -> "keras.Model":
    """A tiny CNN, compiled, with every seed set and deterministic ops: built before its data, as it always was."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.backend.clear_session()  # layer names come from a per-process counter; they end up in the file
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    height = item_shape[0]
    pool = max(1, height // 56)  # 454 → 56: the barcode is coarse, the network stays tiny
    model = keras.Sequential(
        [
            keras.Input(shape=item_shape, dtype="float32"),
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
    return model


def keras_batches(data: TrainingRows, read: RowReader, config: TrainConfig) -> "tf.data.Dataset":
    """Shuffled float32 batches, read from `read` a batch at a time.

    The rows are shuffled as the in-memory dataset (`from_tensor_slices(x).shuffle(len(x), …)`) shuffled them:
    with a buffer of every row, the order depends only on the row count, the seeds and the epoch, never on the
    values, so shuffling positions gives the same order, batches and model bytes, with one batch in memory.
    Keras iterates this one object every epoch, which is what makes each epoch's order the same as before.
    """
    import tensorflow as tf

    shape = (None, *data.item_shape)
    labels = tf.constant(data.labels)

    def load(positions: "tf.Tensor") -> tuple["tf.Tensor", "tf.Tensor"]:
        # Not stateful: the same positions always read the same rows, and nothing else changes.
        images = tf.numpy_function(read, [positions], tf.uint8, stateful=False)
        return tf.ensure_shape(images, shape), tf.gather(labels, positions)

    return (
        tf.data.Dataset.range(len(data))
        .shuffle(len(data), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .map(load)
        .map(lambda images, labels: (tf.cast(images, tf.float32), labels))
    )


def fit_keras_cnn(data: TrainingRows, n_classes: int, config: TrainConfig) -> "keras.Model":
    """The tiny CNN trained on `data`'s uint8 tensors, streamed a batch at a time."""
    one_thread_tensorflow()
    model = keras_cnn(data.item_shape, n_classes, config)
    with data.open() as read:
        model.fit(keras_batches(data, read, config), epochs=config.epochs, verbose=2)
    return model


def train_keras_tflite(data: TrainingRows, n_classes: int, config: TrainConfig, out: Path) -> None:
    write_tflite(fit_keras_cnn(data, n_classes, config), out)


def write_tflite(model: "keras.Model", out: Path) -> None:
    import tensorflow as tf

    atomic_write_bytes(out, tf.lite.TFLiteConverter.from_keras_model(model).convert())


def train_keras(data: TrainingRows, n_classes: int, config: TrainConfig, out: Path) -> None:
    write_keras(fit_keras_cnn(data, n_classes, config), out)


def write_keras(model: "keras.Model", out: Path) -> None:
    """A `.keras` archive, rewritten canonically so the same weights give the same bytes."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        saved = Path(scratch) / "model.keras"
        model.save(saved)
        atomic_write_bytes(out, canonical_keras_archive(saved.read_bytes()))


def train_torch_export(data: TrainingRows, n_classes: int, config: TrainConfig, out: Path) -> None:
    """A small CNN, exported with torch.export. The class is defined here on purpose: its qualified name
    (`train_torch_export.<locals>.SmallCNN`) is recorded in the `.pt2`, so moving it changes the bytes."""
    import torch
    from torch import nn

    one_thread_torch()
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    height = data.item_shape[0]

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
    targets = torch.from_numpy(data.labels)
    generator = torch.Generator().manual_seed(config.seed)
    with data.open() as read, portable_torch_kernels():
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(len(data), generator=generator)
            total, correct = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                index = order[start : start + config.batch_size]
                logits = model(torch.from_numpy(read(index.numpy())).float())
                loss = loss_fn(logits, targets[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
                correct += int((logits.argmax(1) == targets[index]).sum())
            print(f"epoch {epoch + 1}/{config.epochs} loss {total / len(order):.4f} "
                  f"accuracy {correct / len(order):.4f}")
    model.eval()
    example = (torch.zeros((2, *data.item_shape), dtype=torch.float32),)
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
    data = training_rows(preprocessed_dir, raw_dir, labels, config.split, config.max_items, name, config.target)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"training {name} ({config.framework}) on {len(data)} {config.split} items, {len(labels)} classes")
    TRAINERS[config.framework](data, len(labels), config, out)
