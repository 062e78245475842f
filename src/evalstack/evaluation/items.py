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
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from evalstack.core.kinds import RAW_KIND
from evalstack.core.layers import ITEM_KEY, CacheStaleError, Layer

if TYPE_CHECKING:
    from evalstack.config import ModelSpec

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


class Tally:
    """A model's evaluation fed shard by shard (`feed`): several models share one pass over the raw layer.

    A subclass names the raw columns and the derived layer's columns it reads, takes each shard in `add`,
    gives its figures in `result` and writes them in `write` (the evaluate stage's outputs)."""

    raw_columns: tuple[str, ...] = ("split",)
    columns: tuple[str, ...] = ()

    def __init__(self, spec: ModelSpec, layer: Layer, split: str):
        self.spec, self.layer, self.split = spec, layer, split
        self.splits_seen: set[str] = set()

    def add(self, truth: Mapping[str, np.ndarray], derived: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def chosen(self, truth: Mapping[str, np.ndarray]) -> np.ndarray:
        """The rows of one raw shard that the split selects (a boolean mask); remembers the splits seen.
        `truth["split"]` holds str (`feed` converts it once for every tally)."""
        self.splits_seen.update(truth["split"])
        return in_split(truth["split"], self.split)

    def no_items(self) -> ValueError:
        return ValueError(f"no items in split {self.split!r}; splits present: {sorted(self.splits_seen)}")


def feed(raw_dir: Path, tallies: Sequence[Tally]) -> None:
    """Every tally from one pass over the raw layer: each raw shard's truth is read once, whatever the number of
    models, and each derived shard is read beside the raw shard it was built from."""
    if not tallies:
        return
    raw_columns = tuple(dict.fromkeys(name for tally in tallies for name in tally.raw_columns))
    for truth, derived in paired_layers(raw_dir, [tally.layer for tally in tallies], raw_columns,
                                        [tally.columns for tally in tallies]):
        truth["split"] = np.asarray([str(value) for value in truth["split"]], dtype=object)
        for tally, columns in zip(tallies, derived):
            tally.add(truth, columns)


def paired_layers(raw_dir: Path, layers: Sequence[Layer], raw_columns: tuple[str, ...],
                  columns: Sequence[tuple[str, ...]]) -> Iterator[tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]]:
    """Shard by shard, the raw layer's `raw_columns` and, per derived layer, its `columns` of the rows built from
    that raw shard, with the item keys compared row by row first (`Items.check_aligned`'s check), so memory
    holds one shard, not the dataset. Each raw shard is read once, whatever the number of layers. A
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
