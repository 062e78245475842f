"""Demo training streams its rows from the preprocessed layer (issue 25, item 4) and trains the same bytes as
the in-memory path it replaced: the whole split concatenated into one array, fed to Keras through
`from_tensor_slices(...).shuffle(...)` and to torch by indexing that array."""
import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from evalstack.core.kinds import PREPROCESSED_KIND
from evalstack.core.layers import Layer, LayerCorruptError
from evalstack.demo.training.networks import (
    TrainConfig,
    keras_cnn,
    train_demo_model,
    train_torch_export,
    write_keras,
    write_tflite,
)
from evalstack.demo.training.rows import ArrayRows, training_rows
from evalstack.evaluation.classification import label_indices
from evalstack.evaluation.items import read_items
from evalstack.preprocess.pipelines import preprocess_layer
from tests.layers import ITEM_BYTES, Project, tiny_pipeline
from tests.test_fetch import make_registry

LABELS = ("a", "b", "c")
N_ITEMS, MAX_ITEMS, SIZE = 27, 25, 32  # 25 rows in batches of 4: the last batch of each epoch holds one
CONFIG = dict(epochs=3, batch_size=4, max_items=MAX_ITEMS)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    """27 items of three classes over six shards, preprocessed to 32×32."""
    project = Project(tmp_path_factory.mktemp("stream"))
    registry = make_registry(project.root / "source", n=N_ITEMS)
    with open(registry, newline="") as handle:
        rows = list(csv.reader(handle))
    for row in rows[1:]:
        row[2] = LABELS[int(row[0]) * 7 % 3]  # classes interleaved across shards, so a misplaced row shows
    with open(registry, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    project.fetch(None, shard_bytes=5 * ITEM_BYTES)
    preprocess_layer(project.raw, project.pre, tiny_pipeline(SIZE), "none", store=None, name="tiny")
    return project


def in_memory_training_set(project: Project, max_items: int = MAX_ITEMS) -> tuple[np.ndarray, np.ndarray]:
    """The loader streaming replaced (evalstack a2f8b01): every chosen tensor concatenated into one array."""
    items = read_items(project.raw)
    layer = Layer.open(project.pre, kind=PREPROCESSED_KIND)
    chosen = np.flatnonzero(items.split == "dev")[:max_items]
    truth = items.truth("sample_name")
    tensors, names, start = [], [], 0
    for shard in layer.shards:
        rows = chosen[(chosen >= start) & (chosen < start + shard.n_items)]
        if len(rows):
            with layer.open_shard(shard) as handle:
                tensors.append(handle["x"][rows - start])
            names.extend(truth[rows])
        start += shard.n_items
    return np.concatenate(tensors), label_indices(names, LABELS, "m")


def in_memory_keras(x: np.ndarray, y: np.ndarray, config: TrainConfig) -> "keras.Model":  # noqa: F821
    """The Keras fit streaming replaced: the array copied into a tf.data constant, shuffled with it."""
    import tensorflow as tf

    model = keras_cnn(x.shape[1:], len(LABELS), config)
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .map(lambda images, labels: (tf.cast(images, tf.float32), labels))
    )
    model.fit(dataset, epochs=config.epochs, verbose=2)
    return model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rows_read_from_the_shards_are_the_in_memory_rows(project):
    x, y = in_memory_training_set(project)
    rows = training_rows(project.pre, project.raw, LABELS, "dev", MAX_ITEMS, "m")
    assert len(Layer.open(project.pre).shards) > 3 and len(rows) == MAX_ITEMS < N_ITEMS
    assert rows.item_shape == x.shape[1:] and np.array_equal(rows.labels, y)
    positions = np.random.default_rng(0).permutation(len(rows))
    with rows.open() as read:
        assert np.array_equal(read(positions), x[positions])  # across shards, in the order asked
        assert np.array_equal(read(np.asarray([7, 2, 7, 24])), x[[7, 2, 7, 24]])  # a row asked twice


@pytest.mark.parametrize("framework, write", [("keras_tflite", write_tflite), ("keras", write_keras)])
def test_keras_streaming_trains_the_in_memory_bytes(project, tmp_path, framework, write):
    config = TrainConfig(framework, **CONFIG)
    train_demo_model(project.pre, project.raw, LABELS, config, tmp_path / "streamed", "m")
    x, y = in_memory_training_set(project)
    write(in_memory_keras(x, y, config), tmp_path / "in_memory")
    assert sha256(tmp_path / "streamed") == sha256(tmp_path / "in_memory")


def test_torch_streaming_trains_the_in_memory_bytes(project, tmp_path):
    """The in-memory side is the same trainer over the concatenated array: the network class must stay
    where it is (its qualified name is in the `.pt2`), so only the rows' source differs."""
    config = TrainConfig("torch_export", **CONFIG)
    train_demo_model(project.pre, project.raw, LABELS, config, tmp_path / "streamed", "m")
    train_torch_export(ArrayRows(*in_memory_training_set(project)), len(LABELS), config, tmp_path / "in_memory")
    assert sha256(tmp_path / "streamed") == sha256(tmp_path / "in_memory")


def test_a_damaged_shard_is_refused_before_training(project, tmp_path):
    damaged = Project(tmp_path)
    shutil.copytree(project.raw, damaged.raw)
    shutil.copytree(project.pre, damaged.pre)
    shard = damaged.pre / Layer.open(damaged.pre).shards[2].name
    data = bytearray(shard.read_bytes())
    data[-100] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(LayerCorruptError, match="does not match the sha256"):
        training_rows(damaged.pre, damaged.raw, LABELS, "dev", MAX_ITEMS, "m")
