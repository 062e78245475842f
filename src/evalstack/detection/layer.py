"""The detections layer: what the detection infer stage (and CacheWriter) write.

Per shard, one row per image — `item_key` (S64), `id` (int64 image id, or
text), `split_code` (uint8, naming an entry of the shard's `split_names`
attribute) and `det_offset` — and flat arrays `bboxes` (M, 4) float32 (COCO
xywh, original-image pixels), `labels` (M,) int64 (index into the model's label
list) and `scores` (M,) float32. Image i owns rows det_offset[i]:det_offset[i+1];
an image without detections owns an empty range, so it is present and reads
back as (0, 4)/(0,) arrays. Splits are codes because a column of per-item
strings costs HDF5 an object per row.

Every image row carries a sha256 of its own boxes, labels and scores
(`checksum`), and every read checks both the shard's sha256 against the index
(remembered hashes make that free for unchanged files) and each image's
checksum, so damage is refused with the file, the image and the repair named
— and `evalstack verify` names the damaged image too. The candidates layer
(detection/candidates.py) is checked the same way, with these helpers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from evalstack.core.keys import Key, sha256_file
from evalstack.core.kinds import DETECTIONS_KIND
from evalstack.core.layers import (
    CHECKSUM,
    ITEM_KEY,
    CacheStaleError,
    Layer,
    LayerCorruptError,
    LayerWriter,
    ShardInfo,
    read_attr,
    read_column,
    repair_hint,
)
from evalstack.core.ragged import CHECKSUM_ALGORITHM, check_offsets, counts_of, pack, ragged_checksums
from evalstack.detection.boxes import Detections

LAYOUT_VERSION = 2  # 2: per-image checksums
ROW_COLUMNS = (ITEM_KEY, "id", "split_code", "det_offset", CHECKSUM)
FLAT_COLUMNS = ("bboxes", "labels", "scores")
Sha256 = Callable[[Path], str]  # sha256 of a file: sha256_file, or a store's remembered hashes


def checksum_attr(of: Sequence[str], offsets: str) -> dict[str, Any]:
    """The shard attribute telling `verify` how to recompute each image's checksum (core.ragged)."""
    return {"column": CHECKSUM, "of": list(of), "offsets": offsets, "algorithm": CHECKSUM_ALGORITHM}


def check_checksums(path: Path, layer_dir: Path, ids: np.ndarray, offsets: np.ndarray,
                    flats: Sequence[np.ndarray], recorded: np.ndarray) -> None:
    """LayerCorruptError naming the file, the damaged images and the repair when any item's data changed."""
    damaged = np.flatnonzero(ragged_checksums(offsets, flats) != np.asarray(recorded))
    if len(damaged):
        names = ", ".join(str(ids[row]) for row in damaged[:5]) + (" …" if len(damaged) > 5 else "")
        raise LayerCorruptError(f"{path}: the data of {len(damaged)} image(s) (id {names}) does not match their "
                                f"checksums (corrupt or modified); `evalstack verify {layer_dir}` names them. "
                                f"{repair_hint(layer_dir)}")


def checked_shards(layer: Layer, sha256: Sha256 = sha256_file) -> Iterator[tuple[ShardInfo, h5py.File]]:
    """Each shard, open, once its sha256 matches the index; a file HDF5 cannot open is named, with the repair."""
    for shard in layer.shards:
        path = layer.check_shard(shard, sha256)
        try:
            handle = h5py.File(path, "r")
        except OSError as error:
            hint = repair_hint(layer.directory)
            raise LayerCorruptError(f"{path}: unreadable as HDF5 ({error}); {hint}") from None
        with handle:
            yield shard, handle


@dataclass(frozen=True)
class DetectionTable:
    """Per-image rows and the flat arrays they index: one shard, or a whole layer joined."""

    item_keys: np.ndarray  # S64
    ids: np.ndarray  # int64 image ids, or text ids (CacheWriter)
    splits: np.ndarray  # str
    offsets: np.ndarray  # int64, into the flat arrays
    bboxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def counts(self) -> np.ndarray:
        return counts_of(self.offsets, len(self.labels))

    def detections(self, row: int) -> Detections:
        start = int(self.offsets[row])
        stop = int(self.offsets[row + 1]) if row + 1 < len(self.offsets) else len(self.labels)
        return Detections(self.bboxes[start:stop], self.labels[start:stop], self.scores[start:stop])

    @classmethod
    def from_detections(cls, item_keys: Sequence, ids: Sequence[int | str], splits: Sequence[str],
                        detections: Sequence[Detections]) -> "DetectionTable":
        bboxes, offsets = pack([d.boxes for d in detections], np.float32, (4,))
        return cls(
            item_keys=np.asarray(item_keys, dtype="S64"), ids=_ids(ids), splits=np.asarray(splits, dtype=str),
            offsets=offsets, bboxes=bboxes, labels=pack([d.labels for d in detections], np.int64)[0],
            scores=pack([d.scores for d in detections], np.float32)[0],
        )


def _ids(ids: Sequence[int | str]) -> np.ndarray:
    """int64 when every id is an integer (COCO), else text."""
    array = np.asarray(ids)
    if array.dtype.kind in "iu" or len(array) == 0:
        return array.astype(np.int64)
    return np.asarray([str(i) for i in ids], dtype=object)


def split_codes(splits: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(uint8 code per row, the names the codes index)."""
    names, codes = np.unique(np.asarray(splits, dtype=str), return_inverse=True)
    return codes.astype(np.uint8).reshape(-1), [str(n) for n in names]


def detection_shard(table: DetectionTable) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(per-image columns, flat arrays, attrs) of one shard holding `table`, per-image checksums included."""
    codes, names = split_codes(table.splits)
    flat = {"bboxes": table.bboxes, "labels": table.labels, "scores": table.scores}
    columns = {ITEM_KEY: np.asarray(table.item_keys, dtype="S64"), "id": table.ids, "split_code": codes,
               "det_offset": table.offsets,
               CHECKSUM: ragged_checksums(table.offsets, [flat[name] for name in FLAT_COLUMNS])}
    attrs = {"split_names": names, "item_checksum": checksum_attr(FLAT_COLUMNS, "det_offset")}
    return columns, flat, attrs


def write_detections_shard(
    writer: LayerWriter,
    name: str,
    table: DetectionTable,
    attrs: Mapping[str, Any] | None = None,
    upstream: str | None = None,
    tensors: np.ndarray | None = None,
) -> ShardInfo:
    """One shard (through the store: atomic, deterministic)."""
    columns, flat, shard_attrs = detection_shard(table)
    if tensors is not None:
        columns["tensor"] = np.asarray(tensors, dtype=np.float32)
    return writer.add_shard(name, columns, attrs={**(attrs or {}), **shard_attrs}, upstream=upstream, flat=flat)


def open_detections(directory: Path | str, expected: Key | None = None, rebuild_hint: str = "dvc repro") -> Layer:
    """A detections layer; CacheStaleError when its layout or (if given) its key differs."""
    layer = Layer.open(directory, kind=DETECTIONS_KIND)
    layout = layer.index.stats.get("layout")
    if layout != LAYOUT_VERSION:
        raise CacheStaleError(f"{directory} has detections layout {layout}, this evalstack reads {LAYOUT_VERSION}; "
                              f"rebuild it with `{rebuild_hint}`")
    if expected is not None:
        layer.expect_key(expected, rebuild_hint)
    return layer


def read_shard(handle: h5py.File, path: Path, layer_dir: Path) -> DetectionTable:
    """One shard's table, every image's checksum checked."""
    data = {name: read_column(handle, name) for name in ("split_code", "det_offset", CHECKSUM, *FLAT_COLUMNS)}
    ids = read_column(handle, "id")
    try:
        check_offsets(data["det_offset"], len(data["labels"]), str(path))
    except ValueError as error:
        raise LayerCorruptError(f"{error}; {repair_hint(layer_dir)}") from None
    check_checksums(path, layer_dir, ids, data["det_offset"], [data[name] for name in FLAT_COLUMNS], data[CHECKSUM])
    split_names = np.asarray(read_attr(handle, "split_names") or [""], dtype=str)
    return DetectionTable(
        item_keys=handle[ITEM_KEY][()], ids=ids,
        splits=split_names[data["split_code"]], offsets=data["det_offset"], bboxes=data["bboxes"],
        labels=data["labels"], scores=data["scores"],
    )


def read_table(layer: Layer, sha256: Sha256 = sha256_file) -> DetectionTable:
    """Every shard, checked (file sha256, then each image's checksum) and joined (offsets shifted)."""
    shards = [read_shard(handle, layer.path(shard), layer.directory) for shard, handle in checked_shards(layer, sha256)]
    return join_tables(shards)


def join_tables(shards: Sequence[DetectionTable]) -> DetectionTable:
    if len(shards) == 1:
        return shards[0]
    if not shards:
        return DetectionTable.from_detections([], [], [], [])
    bases = np.cumsum([0] + [len(t.labels) for t in shards[:-1]])
    join = lambda field: np.concatenate([getattr(t, field) for t in shards])  # noqa: E731
    return DetectionTable(
        item_keys=join("item_keys"), ids=join("ids"), splits=join("splits"),
        offsets=np.concatenate([t.offsets + base for t, base in zip(shards, bases)]),
        bboxes=join("bboxes"), labels=join("labels"), scores=join("scores"),
    )


def layer_stats(model_name: str, split: str, model_hash: str, num_images: int) -> dict[str, Any]:
    """The index stats every detections layer records (the seed's metadata, minus the timestamp)."""
    return {"layout": LAYOUT_VERSION, "model_name": model_name, "split": split, "model_hash": model_hash,
            "num_images": num_images}
