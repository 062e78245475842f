"""Training rows read a batch at a time, so a trainer's memory does not grow with the dataset.

A trainer sees its data as `TrainingRows`: the label of every row, the shape of one
item, and a reader that returns the uint8 tensors of any rows by position. `LayerRows`
reads them from the preprocessed layer's shards (one batch in memory); `ArrayRows` wraps
arrays already in memory (models fitted on a handful of random tensors in tests and
benches). The order of the rows, and so the model's bytes, is the trainer's business: the
reader only answers "these positions".
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol

import numpy as np

from evalstack.core.kinds import PREPROCESSED_KIND
from evalstack.core.layers import Layer, ShardColumns, ShardInfo
from evalstack.evaluation.classification import label_indices
from evalstack.evaluation.items import read_items

TENSOR = "x"  # the preprocessed layer's column of model inputs

RowReader = Callable[[np.ndarray], np.ndarray]  # positions (0 … len-1, any order) → their tensors, in that order


class TrainingRows(Protocol):
    labels: np.ndarray  # int64 label index of each row

    @property
    def item_shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def open(self) -> ContextManager[RowReader]: ...


@dataclass(frozen=True)
class ArrayRows:
    """Rows already in memory (uint8 tensors and their label indices)."""

    x: np.ndarray
    labels: np.ndarray

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)

    def open(self) -> ContextManager[RowReader]:
        return contextlib.nullcontext(lambda positions: self.x[positions])


@dataclass(frozen=True)
class LayerRows:
    """Rows of a preprocessed layer, chosen by their positions in layer order, read from its shards on demand."""

    layer: Layer
    rows: np.ndarray  # int64 positions in layer order, ascending
    labels: np.ndarray
    item_shape: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rows)

    @contextlib.contextmanager
    def open(self) -> Iterator[RowReader]:
        """A reader over the shards holding chosen rows; each shard file is opened once, at its first read,
        and stays open until the context ends (opening an HDF5 file per batch costs as much as the read)."""
        shards = self.layer.shards
        starts = np.cumsum([0, *(shard.n_items for shard in shards)])
        with contextlib.ExitStack() as stack:
            readers: dict[int, ShardColumns] = {}

            opening = threading.Lock()  # tf.data may call `read` from several threads at once

            def shard_reader(number: int) -> ShardColumns:
                with opening:
                    if number not in readers:
                        readers[number] = stack.enter_context(self.layer.columns(shards[number]))
                    return readers[number]

            def read(positions: np.ndarray) -> np.ndarray:
                wanted = self.rows[np.asarray(positions, dtype=np.int64)]
                out = np.empty((len(wanted), *self.item_shape), dtype=np.uint8)
                shard_of = np.searchsorted(starts, wanted, side="right") - 1
                for number in np.unique(shard_of):
                    mine = np.flatnonzero(shard_of == number)
                    # HDF5 selects rows in increasing order, each once: read them so, then put them in place.
                    local, back = np.unique(wanted[mine] - starts[number], return_inverse=True)
                    out[mine] = shard_reader(int(number)).read(TENSOR, local)[back]
                return out

            yield read


def training_rows(
    preprocessed_dir: Path,
    raw_dir: Path,
    labels: tuple[str, ...],
    split: str,
    max_items: int,
    model: str,
    target: str = "sample_name",
) -> LayerRows:
    """The first `max_items` rows of one split (layer order) and their label indices; no tensor is read.

    Every shard holding a chosen row is checked against the index's sha256 first, so a damaged
    layer is refused before training starts rather than in the middle of an epoch.
    """
    items = read_items(raw_dir)
    layer = Layer.open(preprocessed_dir, kind=PREPROCESSED_KIND)
    items.check_aligned(layer)  # rows are the raw layer's items: truth joins by position, never by content
    chosen = np.flatnonzero(items.split == split)[:max_items].astype(np.int64)
    if not len(chosen):
        raise ValueError(f"no {split!r} items to train {model} on")
    item_shape = None
    for shard in _shards_holding(layer, chosen):
        path = layer.check_shard(shard)
        if item_shape is None:
            with ShardColumns(path, shard) as reader:
                item_shape = tuple(reader.handle[TENSOR].shape[1:])
                dtype = reader.handle[TENSOR].dtype
            if dtype != np.uint8:  # the reader hands out uint8 tensors: another dtype would be cast without a word
                raise ValueError(f"{preprocessed_dir}: the demo networks train on uint8 tensors (0–255), this layer "
                                 f"holds {dtype}; train {model} on an image pipeline (pad_nn, thumb64)")
    names = list(items.truth(target)[chosen])
    return LayerRows(layer, chosen, label_indices(names, labels, model), item_shape)


def _shards_holding(layer: Layer, rows: np.ndarray) -> list[ShardInfo]:
    starts = np.cumsum([0, *(shard.n_items for shard in layer.shards)])
    return [shard for shard, start, stop in zip(layer.shards, starts, starts[1:])
            if np.any((rows >= start) & (rows < stop))]
