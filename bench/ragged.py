"""Ragged detections: the detections layer vs plain numpy save/load of the same arrays.

20,000 images × 15 boxes: bboxes (N, 4) float32, labels int64, scores float32,
and per image an item key (S64), id, split and offset. Both sides start from
the same flat arrays + offsets. The layer side is `write_detections_shard` +
`LayerWriter.finish` (one HDF5 shard, atomic: fsync + rename, sha256 recorded
in index.json) and `read_table(open_detections(...))`; the baseline is
`np.save`/`np.load` of one .npy per array. Best of REPEATS runs each, in one
process; the machine is shared, so absolute times are noisy, ratios less so.

The layer's write pays for durability (two fsyncs: shard and index), which a
plain np.save does not; the fsync time is measured (os.fsync wrapped) and
reported, as is numpy with the same durability (each .npy fsynced). The layer's
write also computes a checksum per image and the shard's sha256; its read checks
both — the shard's sha256 through remembered hashes as every stage reads (a file
whose inode, size and mtime are unchanged is not hashed again), and every image's
checksum, always. The read with a full re-hash of the file is reported too.
Packing per-image Detections into flat arrays, which the infer stage does once per
shard, is reported on its own line.

    PYTHONPATH=src python bench/ragged.py
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from evalstack.core.hashstamps import HashStamps
from evalstack.core.keys import Key
from evalstack.core.kinds import DETECTIONS_KIND
from evalstack.core.layers import LayerWriter, shard_name
from evalstack.core.ragged import offsets_for
from evalstack.detection.layer import (
    LAYOUT_VERSION,
    DetectionTable,
    open_detections,
    read_table,
    write_detections_shard,
)

N_IMAGES, BOXES_PER_IMAGE, REPEATS = 20_000, 15, 15
FIELDS = ("item_key", "id", "split", "det_offset", "bboxes", "labels", "scores")


def make_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = N_IMAGES * BOXES_PER_IMAGE
    return {
        "item_key": np.asarray([f"{i:064x}" for i in range(N_IMAGES)], dtype="S64"),
        "id": np.arange(1, N_IMAGES + 1, dtype=np.int64),
        "split": np.asarray(["val"] * N_IMAGES, dtype="U5"),
        "det_offset": offsets_for(np.full(N_IMAGES, BOXES_PER_IMAGE, dtype=np.int64)),
        "bboxes": rng.random((n, 4), dtype=np.float32) * 500,
        "labels": rng.integers(0, 80, n).astype(np.int64),
        "scores": rng.random(n, dtype=np.float32),
    }


def as_table(data: dict[str, np.ndarray]) -> DetectionTable:
    return DetectionTable(item_keys=data["item_key"], ids=data["id"], splits=data["split"], offsets=data["det_offset"],
                          bboxes=data["bboxes"], labels=data["labels"], scores=data["scores"])


def write_layer(directory: Path, table: DetectionTable) -> None:
    writer = LayerWriter(directory, DETECTIONS_KIND, Key("predictions", {"bench": True}))
    write_detections_shard(writer, shard_name(0), table)
    writer.stats = {"layout": LAYOUT_VERSION}
    writer.finish()


def read_layer(directory: Path, stamps: HashStamps | None = None) -> DetectionTable:
    return read_table(open_detections(directory), stamps.sha256) if stamps else read_table(open_detections(directory))


def write_numpy(directory: Path, data: dict[str, np.ndarray], durable: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in FIELDS:
        with open(directory / f"{name}.npy", "wb") as handle:
            np.save(handle, data[name])
            if durable:
                handle.flush()
                os.fsync(handle.fileno())


def read_numpy(directory: Path) -> dict[str, np.ndarray]:
    return {name: np.load(directory / f"{name}.npy") for name in FIELDS}


def write_numpy_checked(directory: Path, data: dict[str, np.ndarray]) -> dict[str, str]:
    """np.save + fsync per file + the sha256 of each file's bytes, kept for the reader: the honest way to get
    the layer's integrity (a damaged file is detected) with plain numpy. Returns name → sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name in FIELDS:
        buffer = io.BytesIO()
        np.save(buffer, data[name])
        payload = buffer.getbuffer()
        digests[name] = hashlib.sha256(payload).hexdigest()
        with open(directory / f"{name}.npy", "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    return digests


def read_numpy_checked(directory: Path, digests: dict[str, str]) -> dict[str, np.ndarray]:
    """Each file read once, its sha256 compared with the writer's, then parsed by np.load."""
    arrays = {}
    for name in FIELDS:
        payload = (directory / f"{name}.npy").read_bytes()
        if hashlib.sha256(payload).hexdigest() != digests[name]:
            raise ValueError(f"{name}.npy: damaged")
        arrays[name] = np.load(io.BytesIO(payload))
    return arrays


class FsyncClock:
    """Time spent in os.fsync while active (measurement only; fsync still happens)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._real = os.fsync

    def __enter__(self) -> "FsyncClock":
        def timed(fd: int) -> None:
            start = time.perf_counter()
            self._real(fd)
            self.seconds += time.perf_counter() - start

        os.fsync = timed
        return self

    def __exit__(self, *exc) -> None:
        os.fsync = self._real


def best(action: Callable[[], object], setup: Callable[[], object] = lambda: None) -> tuple[float, float]:
    """(best wall time, fsync time of that run) over REPEATS runs."""
    runs = []
    for _ in range(REPEATS):
        setup()
        with FsyncClock() as clock:
            start = time.perf_counter()
            action()
            runs.append((time.perf_counter() - start, clock.seconds))
    return min(runs)


def main() -> None:
    data = make_data()
    table = as_table(data)
    per_image = [table.detections(row) for row in range(N_IMAGES)]
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        layer_dir, numpy_dir = Path(tmp) / "layer", Path(tmp) / "numpy"
        clear_layer = lambda: shutil.rmtree(layer_dir, ignore_errors=True)  # noqa: E731
        clear_numpy = lambda: shutil.rmtree(numpy_dir, ignore_errors=True)  # noqa: E731
        layer_write, layer_fsync = best(lambda: write_layer(layer_dir, table), clear_layer)
        numpy_write, _ = best(lambda: write_numpy(numpy_dir, data), clear_numpy)
        durable_write, _ = best(lambda: write_numpy(numpy_dir, data, durable=True), clear_numpy)
        stamps = HashStamps(Path(tmp) / "stamps")
        stamps.remember(layer_dir / shard_name(0), open_detections(layer_dir).shards[0].sha256)  # as the writer does
        layer_read, _ = best(lambda: read_layer(layer_dir, stamps))
        rehash_read, _ = best(lambda: read_layer(layer_dir))
        numpy_read, _ = best(lambda: read_numpy(numpy_dir))
        digests: dict[str, str] = {}
        checked_write, _ = best(lambda: digests.update(write_numpy_checked(numpy_dir, data)), clear_numpy)
        checked_read, _ = best(lambda: read_numpy_checked(numpy_dir, digests))
        packing, _ = best(lambda: DetectionTable.from_detections(data["item_key"], data["id"], data["split"], per_image))
        back = read_layer(layer_dir)
        assert all(np.array_equal(getattr(back, f), getattr(table, f)) for f in ("bboxes", "labels", "scores", "offsets"))
        size = sum(p.stat().st_size for p in layer_dir.iterdir())
    ms = lambda seconds: f"{seconds * 1e3:6.1f} ms"  # noqa: E731
    print(f"{N_IMAGES} images × {BOXES_PER_IMAGE} boxes; layer {size / 1e6:.1f} MB; best of {REPEATS}")
    print(f"read   layer {ms(layer_read)}   np.load {ms(numpy_read)}   ratio {layer_read / numpy_read:.2f}×"
          f"   (re-hashing the shard too: {ms(rehash_read)}, {rehash_read / numpy_read:.2f}×)")
    print(f"write  layer {ms(layer_write)}   np.save {ms(numpy_write)}   ratio {layer_write / numpy_write:.2f}×"
          f"   (of which fsync {ms(layer_fsync)})")
    print(f"write  layer without its fsync time {ms(layer_write - layer_fsync)}   "
          f"ratio {(layer_write - layer_fsync) / numpy_write:.2f}×")
    print(f"write  layer {ms(layer_write)}   np.save + fsync per file {ms(durable_write)}   "
          f"ratio {layer_write / durable_write:.2f}×")
    total = (layer_write + layer_read) / (numpy_write + numpy_read)
    print(f"write + read vs plain numpy: ratio {total:.2f}×")
    durable = (layer_write + layer_read) / (durable_write + numpy_read)
    print(f"write + read vs np.save + fsync per file and np.load (equal durability): ratio {durable:.2f}× "
          f"(goal: within 2×; {(layer_write + rehash_read) / (durable_write + numpy_read):.2f}× re-hashing on read)")
    checked = (layer_write + rehash_read) / (checked_write + checked_read)
    print(f"D2: write + read vs np.save + fsync + sha256 per file and np.load + sha256 (same integrity: both re-hash "
          f"every byte on read): {ms(layer_write + rehash_read)} vs {ms(checked_write + checked_read)}, ratio "
          f"{checked:.2f}× (goal ≤ 1.5×); with the layer's remembered hashes on read "
          f"{(layer_write + layer_read) / (checked_write + checked_read):.2f}×")
    print(f"(packing {N_IMAGES} per-image Detections into flat arrays: {ms(packing)}, done once per shard by infer)")


if __name__ == "__main__":
    main()
