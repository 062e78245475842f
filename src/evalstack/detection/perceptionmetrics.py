"""The seed's Python names over the detections layer (PerceptionMetrics PR #568).

`CacheWriter`, `CacheReader`, `is_cache_valid`, `compute_model_hash` and
`CacheStaleError` (evalstack.core.layers's, so one `except` catches every stale
layer) keep the seed's signatures and behaviour; the data lives in a
detections layer (see detection/layer.py), so a layer the infer stage wrote
opens here too. Deliberate differences from the seed:

- a layer is a directory (shards + index.json), not one file;
- no timestamp is stored with the data, because it would make identical
  predictions differ byte-wise; `CacheWriter(..., record_time=True)` writes one
  to provenance.json beside the index, and `metadata()["timestamp"]` is None
  otherwise;
- `compute_model_hash(model=...)` hashes the weights' bytes, not the parameter
  count, which two trainings of one architecture share;
- tensors are optional (the infer stage keeps them in the preprocessed layer;
  `CacheReader(..., tensors=<that layer>)` reads them from there);
- every read is checked: each shard's sha256 against the index and each image's
  checksum, so a damaged cache is refused naming the file and image (and how to
  restore it), never read as other numbers; `is_cache_valid` also says False for a
  missing or truncated shard (a stat and an HDF5 open per shard, no data read);
- `CacheWriter` over an existing cache leaves it valid until the new one is
  complete (it is built beside it and put in its place on close), so a crash
  mid-loop leaves the old cache as it was.
- a corruption-grid cell (`data/grid_predictions/<model>/<type>-<severity>`) opens
  the same way; its `metadata()` names the perturbation.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.keys import Key, sha256_bytes, sha256_file
from evalstack.core.kinds import DETECTIONS_KIND
from evalstack.core.layers import (
    ITEM_KEY,
    CacheStaleError,
    Layer,
    LayerWriter,
    StoreError,
    read_column,
    shard_name,
)
from evalstack.detection.boxes import Detections
from evalstack.detection.layer import (
    DetectionTable,
    layer_stats,
    open_detections,
    read_table,
    write_detections_shard,
)

PROVENANCE_NAME = "provenance.json"

__all__ = ["CacheReader", "CacheStaleError", "CacheWriter", "compute_model_hash", "is_cache_valid"]


def compute_model_hash(model: Any = None, file_path: str | Path | None = None) -> str:
    """sha256 of the weight file, or of a torch module's weights (names, dtypes, shapes, bytes)."""
    if file_path is not None:
        return sha256_file(file_path)
    if model is None:
        raise ValueError("give compute_model_hash a file_path or a model")
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def is_cache_valid(path: str | Path, expected_model_hash: str) -> bool:
    """True iff `path` is a finished detections layer of this schema built by that model, with every
    shard present and whole (HDF5 checks a file's recorded end against its size when opening it).
    Per shard a stat and an open; no data is read (`CacheReader` checks the bytes)."""
    try:
        layer = open_detections(path)
        if layer.index.stats.get("model_hash") != expected_model_hash:
            return False
        for shard in layer.shards:
            with h5py.File(layer.path(shard), "r"):
                pass
    except (StoreError, OSError, ValueError, KeyError):
        return False
    return True


class CacheWriter:
    """Seed-compatible writer: `with CacheWriter(path, name, split, hash) as w: w.write_image(...)`.

    Images are buffered and written a shard at a time (`shard_size` images or
    `shard_bytes` of buffered data, whichever comes first) into a staging directory
    (core.layers.LayerWriter); a cache already at `path` stays in place and valid
    until the block exits without an exception, when the new one replaces it.
    """

    def __init__(self, path: str | Path, model_name: str, split: str, model_hash: str, *,
                 shard_size: int = 16384, shard_bytes: int = 64 << 20, compression: str = "lz4",
                 record_time: bool = False):
        self.path = Path(path)
        self.model_name, self.split, self.model_hash = model_name, split, model_hash
        self.shard_size, self.shard_bytes = shard_size, shard_bytes
        self._buffered_bytes = 0
        self.record_time = record_time
        key = Key("predictions", {"model_name": model_name, "split": split, "model_hash": model_hash})
        self._writer = LayerWriter(self.path, DETECTIONS_KIND, key, compression)
        self._rows: list[tuple[str, int | str, Detections, np.ndarray | None]] = []
        self._n_written = 0
        self._seen: set[str] = set()
        self._tensor_shape: tuple[int, ...] | None = None

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None:
            self.close()
        return False

    def write_image(self, img_id: int | str, tensor: Any, bboxes: Any, labels: Any, scores: Any) -> None:
        """One image: its model-input tensor (C, H, W) or None, and its detections (may be empty)."""
        if str(img_id) in self._seen:
            raise ValueError(f"image {img_id!r} was already written to {self.path}")
        found = Detections(_numpy(bboxes, np.float32).reshape(-1, 4), _numpy(labels, np.int64).reshape(-1),
                           _numpy(scores, np.float32).reshape(-1))
        array = None if tensor is None else _numpy(tensor, np.float32)
        shape = None if array is None else array.shape
        if self._seen and shape != self._tensor_shape:
            raise ValueError(f"image {img_id!r}: tensor shape {shape}, earlier images {self._tensor_shape} "
                             "(every image needs a tensor of one shape, or none has one)")
        self._tensor_shape = shape
        self._seen.add(str(img_id))
        key = sha256_bytes(array.tobytes() if array is not None else f"id:{img_id}".encode())
        self._rows.append((key, img_id, found, array))
        self._buffered_bytes += sum(a.nbytes for a in (found.boxes, found.labels, found.scores, array) if a is not None)
        if len(self._rows) >= self.shard_size or self._buffered_bytes >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        keys, ids, found, tensors = zip(*self._rows)
        stacked = None if tensors[0] is None else np.stack(tensors)
        table = DetectionTable.from_detections(keys, ids, [self.split] * len(ids), found)
        write_detections_shard(self._writer, shard_name(len(self._writer.shards)), table, tensors=stacked)
        self._n_written += len(ids)
        self._rows = []
        self._buffered_bytes = 0

    def close(self) -> None:
        self._flush()
        self._writer.stats = layer_stats(self.model_name, self.split, self.model_hash, self._n_written)
        self._writer.finish()  # publishes the new layer in place of the old one, in one rename
        provenance = self.path / PROVENANCE_NAME
        if self.record_time:
            stamp = {"timestamp": datetime.now(timezone.utc).isoformat()}
            atomic_write_bytes(provenance, (json.dumps(stamp) + "\n").encode())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _numpy(value: Any, dtype: type) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


class CacheReader:
    """Seed-compatible reader: validates schema and model hash on open, then reads per image.

    Every shard's sha256 and every image's checksum are checked on open. Tensors come
    from the layer's own `tensor` column (CacheWriter with tensors) or, for a layer
    the pipeline wrote, from the letterboxed layer its candidates were computed from
    (`tensors=`), after checking the shards are that layer's.
    """

    def __init__(self, path: str | Path, expected_model_hash: str, tensors: str | Path | None = None):
        self.path = Path(path)
        self.layer = open_detections(self.path)
        stored = self.layer.index.stats.get("model_hash")
        if stored != expected_model_hash:
            raise CacheStaleError(f"{self.path}: model_hash mismatch: stored {stored!r}, expected "
                                  f"{expected_model_hash!r}; rebuild it (rerun inference)")
        self.table = read_table(self.layer, sha256_file)
        self._rows = {str(image_id): row for row, image_id in enumerate(self.table.ids.tolist())}
        self._starts = np.cumsum([0] + [s.n_items for s in self.layer.shards])
        self._tensors = self._tensor_layer(tensors)
        self._tensor_rows: dict[str, tuple[int, int]] | None = None

    def _tensor_layer(self, tensors: str | Path | None) -> Layer | None:
        if tensors is None:
            return None
        stats = self.layer.index.stats
        if "perturbation" in stats:
            raise StoreError(f"{self.path} is a corruption-grid cell ({stats['perturbation']}); its inputs are "
                             "corrupted originals, kept in no layer, so it has no tensors to read")
        source = Layer.open(tensors)
        mine = stats.get("tensor_shards", [s.upstream for s in self.layer.shards])
        if mine != [s.sha256 for s in source.shards]:
            raise CacheStaleError(f"{tensors} is not the preprocessed layer {self.path} was computed from")
        return source

    def __enter__(self) -> "CacheReader":
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        return False

    def __len__(self) -> int:
        return len(self.table)

    def image_ids(self) -> list[str]:
        return [str(i) for i in self.table.ids.tolist()]

    def _row(self, img_id: int | str) -> int:
        if str(img_id) not in self._rows:
            raise KeyError(f"image {img_id!r} is not in {self.path}")
        return self._rows[str(img_id)]

    def read_preds(self, img_id: int | str) -> dict[str, np.ndarray]:
        found = self.table.detections(self._row(img_id))
        return {"bboxes": found.boxes, "labels": found.labels, "scores": found.scores}

    def read_tensor(self, img_id: int | str) -> np.ndarray:
        """(C, H, W) float32 with the pipeline's values (0–255 for evalstack pipelines)."""
        row = self._row(img_id)
        if self._tensors is None:
            shard_index = int(np.searchsorted(self._starts, row, side="right")) - 1
            with self.layer.open_shard(self.layer.shards[shard_index]) as handle:
                if "tensor" not in handle:
                    raise StoreError(f"{self.path} holds no tensors; pass tensors=<preprocessed layer>")
                return handle["tensor"][row - int(self._starts[shard_index])]
        # The letterboxed layer holds every image of every split; find this one by its item key.
        shard_index, tensor_row = self._tensor_index()[_text(self.table.item_keys[row])]
        with self._tensors.open_shard(self._tensors.shards[shard_index]) as handle:
            array = read_column(handle, "x", slice(tensor_row, tensor_row + 1))[0]
        return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)

    def _tensor_index(self) -> dict[str, tuple[int, int]]:
        if self._tensor_rows is None:
            self._tensor_rows = {}
            for number, shard in enumerate(self._tensors.shards):
                with self._tensors.open_shard(shard) as handle:
                    for tensor_row, key in enumerate(read_column(handle, ITEM_KEY).tolist()):
                        self._tensor_rows.setdefault(_text(key), (number, tensor_row))
        return self._tensor_rows

    def metadata(self) -> dict[str, Any]:
        stats = self.layer.index.stats
        provenance = self.path / PROVENANCE_NAME
        stamp = json.loads(provenance.read_text())["timestamp"] if provenance.exists() else None
        meta = {
            "model_name": stats.get("model_name"), "split": stats.get("split"), "coco_split": stats.get("split"),
            "model_hash": stats.get("model_hash"), "schema_version": self.layer.index.schema_version,
            "timestamp": stamp, "num_images": stats.get("num_images"),
        }
        if "perturbation" in stats:
            meta["perturbation"] = stats["perturbation"]
        return meta
