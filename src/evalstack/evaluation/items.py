"""The raw layer's items as evaluation sees them: identity first, content beside it.

Truth, splits and every per-item table join on identity (the source's id). Content keys
(sha256 of the image bytes) are for caching: two registry ids may carry the same bytes,
and each keeps its own drug, quantity and split. A derived layer (tensors, predictions)
has one shard per raw shard with the same rows in the same order, so its rows line up
with the raw layer's by position; their item keys are compared row by row before any
join, so a layer built from other raw data is refused instead of silently mislabelled.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from evalstack.core.kinds import RAW_KIND
from evalstack.core.layers import ITEM_KEY, CacheStaleError, Layer

ALL_SPLITS = "all"  # evaluate.split value that takes every item, whatever its split
TRUTH_COLUMNS = ("sample_name", "quantity", "split")


def in_split(splits: Any, split: str) -> np.ndarray:
    """Boolean mask of the items that `split` (a split name, or "all") selects."""
    splits = np.asarray(splits)
    return np.ones(len(splits), dtype=bool) if split == ALL_SPLITS else splits == split


@dataclass(frozen=True)
class Items:
    """Every item of a raw layer, in layer order."""

    raw_dir: Path
    ids: np.ndarray  # int64, the source's ids: what tables join on
    keys: np.ndarray  # str, item keys (content)
    sample_name: np.ndarray  # str
    quantity: np.ndarray  # int64
    split: np.ndarray  # str

    def __len__(self) -> int:
        return len(self.ids)

    def truth(self, column: str) -> np.ndarray:
        """A truth column as class names: `quantity` gives "0", "20", …"""
        values = getattr(self, column)
        return np.asarray([str(value) for value in values], dtype=object)

    def in_split(self, split: str) -> np.ndarray:
        mask = in_split(self.split, split)
        if not mask.any():
            raise ValueError(f"no items in split {split!r}; splits present: {sorted(set(self.split))}")
        return mask

    def check_aligned(self, layer: Layer, rows: np.ndarray | None = None) -> None:
        """Refuse a derived layer whose rows are not this layer's items (or `rows` of them), in order."""
        _check_keys(layer, self.keys if rows is None else self.keys[rows], self.raw_dir)


def _check_keys(layer: Layer, expected: np.ndarray, raw: Path | str) -> None:
    keys = np.asarray(layer.item_keys(), dtype=str)
    if len(keys) != len(expected):
        differ = f"{len(keys)} rows where the raw layer selects {len(expected)}"
    elif not np.array_equal(keys, expected):
        differ = f"row {int(np.flatnonzero(keys != expected)[0])} holds another item"
    else:
        return
    raise CacheStaleError(f"{layer.directory} was not built from {raw} as it is now ({differ}); rebuild it with "
                          "`dvc repro` (it is stale, or another raw layer's)")


def read_items(raw_dir: Path) -> Items:
    raw = Layer.open(raw_dir, kind=RAW_KIND)
    return Items(
        raw_dir=Path(raw_dir),
        ids=np.asarray(raw.column("id"), dtype=np.int64),
        keys=np.asarray(raw.item_keys(), dtype=str),
        sample_name=np.asarray([str(v) for v in raw.column("sample_name")], dtype=object),
        quantity=np.asarray(raw.column("quantity"), dtype=np.int64),
        split=np.asarray([str(v) for v in raw.column("split")], dtype=object),
    )


@dataclass(frozen=True)
class ShardPair:
    """One raw shard's truth columns beside the derived layer's rows built from it (same items, same order)."""

    raw: dict[str, np.ndarray]
    derived: dict[str, np.ndarray]


def paired_shards(raw_dir: Path, layer: Layer, raw_columns: tuple[str, ...], columns: tuple[str, ...]) -> Iterator[ShardPair]:
    """Shard by shard, the raw layer's `raw_columns` and `layer`'s `columns`, with the item keys compared
    row by row first (`Items.check_aligned`'s check), so memory holds one shard, not the dataset."""
    for truth, (derived,) in paired_layers(raw_dir, [layer], raw_columns, [columns]):
        yield ShardPair(truth, derived)


def paired_layers(raw_dir: Path, layers: Sequence[Layer], raw_columns: tuple[str, ...],
                  columns: Sequence[tuple[str, ...]]) -> Iterator[tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]]:
    """`paired_shards` for several derived layers at once: each raw shard is read once, whatever the number of
    layers (the evaluate stage reads every model's predictions against one pass over the truth).

    Yields the raw shard's `raw_columns` and, per layer, its `columns` of the rows built from that shard. A
    derived layer has one shard per raw shard; one that does not (another layer's, or an old format) is
    checked as a whole first, which names the first row that differs.
    """
    raw = Layer.open(raw_dir, kind=RAW_KIND)
    counts = [s.n_items for s in raw.shards]
    for layer in layers:
        if [s.n_items for s in layer.shards] != counts:
            read_items(raw_dir).check_aligned(layer)  # raises with the row; equal shapes would have come here
    start = 0
    for position, raw_shard in enumerate(raw.shards):
        with raw.columns(raw_shard) as raw_reader:
            expected = np.asarray(raw_reader.read(ITEM_KEY), dtype=str)
            truth = {name: raw_reader.read(name) for name in raw_columns}
        derived = []
        for layer, names in zip(layers, columns):
            if position >= len(layer.shards):
                raise CacheStaleError(f"{layer.directory} was not built from {raw_dir} as it is now (it has "
                                      f"{len(layer.shards)} shards where the raw layer has {len(counts)}); rebuild it "
                                      "with `dvc repro` (it is stale, or another raw layer's)")
            with layer.columns(layer.shards[position]) as reader:
                keys = np.asarray(reader.read(ITEM_KEY), dtype=str)
                if not np.array_equal(keys, expected):
                    row = start + int(np.flatnonzero(keys != expected)[0]) if len(keys) == len(expected) else start
                    raise CacheStaleError(f"{layer.directory} was not built from {raw_dir} as it is now (row {row} "
                                          "holds another item); rebuild it with `dvc repro` (it is stale, or another "
                                          "raw layer's)")
                derived.append({name: reader.read(name) for name in names})
        yield truth, derived
        start += raw_shard.n_items


def truth_frame(raw_dir: Path) -> "pd.DataFrame":  # noqa: F821 (pandas is imported where it is needed)
    """The labelled facts of every item in layer order, indexed by id: item_key, sample_name, quantity, split."""
    import pandas as pd

    items = read_items(raw_dir)
    frame = pd.DataFrame({"item_key": items.keys, "sample_name": items.sample_name, "quantity": items.quantity,
                          "split": items.split}, index=pd.Index(items.ids, name="id"))
    return frame


def check_frame_aligned(layer: Layer, truth: "pd.DataFrame") -> None:  # noqa: F821
    """`Items.check_aligned` for a truth frame (as `truth_frame` gives it)."""
    _check_keys(layer, truth["item_key"].to_numpy(dtype=str), "the raw layer")
