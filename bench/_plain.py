"""Plain scripts doing what P10's heaviest stages do, the way a user would without evalstack (P10's second goal).

Each reads what the one before it wrote — one HDF5 file of every card's bytes, one .npy per pipeline — and does
the stage's work on the same items with the same libraries and the same parallelism (`fetch.workers` threads,
`local.workers` processes or threads), but with no shards, no keys, no store, no index and no hashing of what
it writes. They are not strawmen:
* the per-item work is evalstack's own functions where a user would call a library doing the same: the pipeline's
  `process_image` (equal to pad-analytics 0.2.2, tests/test_pad_analytics.py) and `perturb` (equal to
  imagecorruptions 1.1.2 pixel for pixel, and no slower per image: bench/RESULTS.md, "Corruption speed per type");
* the model runs through ai-edge-litert's Interpreter as its docs show (bench/_naive.py's `BareTFLite`);
* everything written is flushed and fsynced once at the end, as the stages make theirs durable.
bench/p10_plain.py times each against the stage's own command and checks that both give the same results.

    PYTHONPATH=src python bench/_plain.py fetch|preprocess|infer|robustness PROJECT OUT [--pipeline P] [--model M]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np
import yaml
from _naive import BareTFLite, Row, registry_rows
from PIL import Image

from evalstack.preprocess.perturbations import perturb
from evalstack.preprocess.pipelines import build_pipeline

RAW_FILE = "raw.h5"
_CHUNK = 32  # items per task: enough to amortise a task's hand-off, few enough to keep both workers busy


def _durable(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class Integrity:
    """`--integrity`: the checks the stages make, added to a plain script (as D2's baseline has them): every
    input file's sha256 computed in full in a thread beside the work (the stages read upstream shards so), and
    every output file's once it is written (the stages hash a shard's bytes as they go to disk)."""

    def __init__(self, enabled: bool, *inputs: Path):
        self.pool = ThreadPoolExecutor(1) if enabled else None
        self.inputs = self.pool.submit(lambda: [sha256_of(path) for path in inputs]) if self.pool else None

    def done(self, *outputs: Path) -> None:
        if self.pool is None:
            return
        self.inputs.result()
        for path in outputs:
            sha256_of(path)
        self.pool.shutdown()


def _checked(row: Row, max_pixels: int) -> tuple[str, bytes]:
    """The card's bytes, md5-checked and decoded in full once (what a download check is); its sha256."""
    data = row.path.read_bytes()
    if hashlib.md5(data).hexdigest() != row.md5:
        raise ValueError(f"{row.path}: md5 differs from the registry's")
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > max_pixels:
            raise ValueError(f"{row.path}: {image.width}×{image.height} is over the pixel cap")
        image.load()
    return hashlib.sha256(data).hexdigest(), data


def _chunks(n: int, size: int = _CHUNK) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def fetch(project: Path, params: dict[str, Any], out: Path, integrity: bool = False) -> None:
    """Every registry row read, checked and decoded on `fetch.workers` threads, its bytes kept in one HDF5 file."""
    checks = Integrity(integrity)  # the cards' sha256 are taken anyway (the item keys)
    rows = registry_rows(project, params)
    max_pixels = int(params["fetch"]["max_pixels"])
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(int(params["fetch"]["workers"])) as pool, h5py.File(out / RAW_FILE, "w") as handle:
        blobs = handle.create_dataset("bytes", (len(rows),), dtype=h5py.vlen_dtype(np.uint8))
        keys = []
        # a run of rows at a time: Executor.map over all of them would hold every card's bytes at once
        for start, stop in _chunks(len(rows), 4 * int(params["fetch"]["workers"])):
            for offset, (key, data) in enumerate(pool.map(lambda r: _checked(r, max_pixels), rows[start:stop])):
                blobs[start + offset] = np.frombuffer(data, dtype=np.uint8)
                keys.append(key)
        handle["item_key"] = np.array(keys, dtype="S64")
        handle["id"] = np.array([r.id for r in rows], dtype=np.int64)
        handle["split"] = np.array([r.split for r in rows], dtype="S8")
        handle["sample_name"] = np.array([r.sample_name.encode() for r in rows])
    _durable(out / RAW_FILE)
    checks.done(out / RAW_FILE)


# One raw file and one pipeline per worker process, opened by the pool's initializer (multiprocessing's idiom).
_worker: dict[str, Any] = {}


def _open_raw(raw: Path, spec: dict[str, Any]) -> None:
    _worker["blobs"] = h5py.File(raw, "r")["bytes"]
    _worker["pipeline"] = build_pipeline(spec)


def _preprocess_chunk(bounds: tuple[int, int]) -> tuple[int, np.ndarray]:
    start, stop = bounds
    pipeline = _worker["pipeline"]
    return start, np.stack([pipeline.process_image(Image.open(io.BytesIO(data.tobytes())))
                            for data in _worker["blobs"][start:stop]])


def preprocess(params: dict[str, Any], name: str, raw: Path, out: Path, integrity: bool = False) -> None:
    """Every card decoded and put through the pipeline on `local.workers` processes, into one .npy."""
    checks = Integrity(integrity, raw)
    spec = params["preprocess"]["pipelines"][name]
    pipeline = build_pipeline(spec)
    with h5py.File(raw, "r") as handle:
        n = len(handle["bytes"])
    tensors = np.lib.format.open_memmap(out, "w+", pipeline.output_dtype(), (n, *pipeline.output_shape()))
    with Pool(int(params["local"]["workers"]), _open_raw, (raw, spec)) as pool:
        for start, chunk in pool.imap_unordered(_preprocess_chunk, _chunks(n)):
            tensors[start:start + len(chunk)] = chunk
    tensors.flush()
    del tensors
    _durable(out)
    checks.done(out)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def infer(params: dict[str, Any], model: Path, preprocessed: Path, out: Path, integrity: bool = False) -> None:
    """The model over every preprocessed card in batches of `infer.batch_size`, its outputs into one .npy."""
    checks = Integrity(integrity, preprocessed)
    tensors = np.load(preprocessed, mmap_mode="r")
    interpreter = BareTFLite(model)
    outputs = [interpreter(np.asarray(tensors[rows], dtype=np.float32))
               for rows in _batches(len(tensors), int(params["infer"]["batch_size"]))]
    np.save(out, np.concatenate(outputs))
    _durable(out)
    checks.done(out)


def _perturbed_batches(pool: ThreadPoolExecutor, images: np.ndarray, rows: np.ndarray, keys: Sequence[str],
                       kind: str, severity: int, seed: int, batch: int) -> Iterator[np.ndarray]:
    """The cell's images perturbed on the pool, a batch at a time, the next batch under way while this one is
    run through the model (only two batches in memory: a cell of 2,400 cards at 454×454 would be 1.5 GB)."""
    pending: deque[list[Future[np.ndarray]]] = deque()
    for part in _batches(len(rows), batch):
        pending.append([pool.submit(perturb, images[row], kind, severity, key, seed)
                        for row, key in zip(rows[part], keys[part])])
        if len(pending) == 2:
            yield np.stack([future.result() for future in pending.popleft()])
    while pending:
        yield np.stack([future.result() for future in pending.popleft()])


def robustness(params: dict[str, Any], model: Path, raw: Path, preprocessed: Path, labels: Sequence[str],
               out: Path, integrity: bool = False) -> dict[tuple[str, int], float]:
    """Each (type, severity) cell of `robustness:` over its split: the images perturbed on `local.workers`
    threads (the corruptions release the GIL in numpy, SciPy and OpenCV), the model run in batches, each cell's
    outputs saved; the accuracy of each cell returned."""
    grid = params["robustness"]
    checks = Integrity(integrity, preprocessed)  # the raw file is read for its labels only, as the stage's is
    with h5py.File(raw, "r") as handle:
        chosen = np.flatnonzero(handle["split"][:] == grid["split"].encode())
        keys = [key.decode() for key in handle["item_key"][:][chosen]]
        truth = np.array([list(labels).index(name.decode()) for name in handle["sample_name"][:][chosen]])
    images = np.load(preprocessed, mmap_mode="r")
    batch = int(params["infer"]["batch_size"])
    interpreter = BareTFLite(model)
    accuracy = {}
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(int(params["local"]["workers"])) as pool:
        for kind in grid["types"]:
            for severity in grid["severities"]:
                batches = _perturbed_batches(pool, images, chosen, keys, kind, severity, int(grid["seed"]), batch)
                outputs = np.concatenate([interpreter(part.astype(np.float32)) for part in batches])
                np.save(out / f"{kind}-{severity}.npy", outputs)
                accuracy[(kind, severity)] = float(np.mean(np.argmax(outputs, axis=1) == truth))
    for path in out.glob("*.npy"):
        _durable(path)
    checks.done(*out.glob("*.npy"))
    return accuracy


def main() -> None:
    """One plain script per stage, each run as its own process as a user would run it (the stage's command pays
    its interpreter's start-up and imports too)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("fetch", "preprocess", "infer", "robustness"))
    parser.add_argument("project", type=Path)
    parser.add_argument("out", type=Path, help="where the plain scripts keep their files")
    parser.add_argument("--pipeline", help="preprocess: the pipeline's name")
    parser.add_argument("--model", help="infer, robustness: the model's name (a tflite one)")
    parser.add_argument("--integrity", action="store_true", help="also hash every file read and written in full")
    args = parser.parse_args()
    params = yaml.safe_load((args.project / "params.yaml").read_text())
    raw = args.out / RAW_FILE
    if args.stage == "fetch":
        fetch(args.project, params, args.out, args.integrity)
    elif args.stage == "preprocess":
        preprocess(params, args.pipeline, raw, args.out / f"{args.pipeline}.npy", args.integrity)
    else:
        entry = params["models"][args.model]
        model, tensors = args.project / entry["file"], args.out / f"{entry['pipeline']}.npy"
        if args.stage == "infer":
            infer(params, model, tensors, args.out / f"{args.model}.npy", args.integrity)
        else:
            cells = robustness(params, model, raw, tensors, params["labels"][entry["labels"]], args.out / "grid",
                               args.integrity)
            print(json.dumps([[kind, severity, accuracy] for (kind, severity), accuracy in cells.items()]))


if __name__ == "__main__":
    main()
