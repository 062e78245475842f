"""Writing a dataset: card PNGs plus the registry CSVs, incremental and atomic."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import multiprocessing
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from evalstack.core.atomic import atomic_write_bytes
from evalstack.demo.cards.cards import CardSpec, plan_cards
from evalstack.demo.cards.png import encode_png
from evalstack.demo.cards.render import render_array, render_card
from evalstack.sources.registry import REGISTRY_COLUMNS


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class _Job:
    spec: CardSpec
    seed: int
    path: Path
    must_exist: bool


def _materialise(job: _Job) -> str:
    """Make sure the card's PNG exists; return its md5."""
    if job.path.exists():
        return _file_md5(job.path)
    if job.must_exist:
        raise FileNotFoundError(f"{job.path} is before start= but missing; rerun with a smaller start")
    data = encode_png(render_array(job.spec, job.seed))
    atomic_write_bytes(job.path, data)
    return hashlib.md5(data).hexdigest()


def _check_existing(specs: list[CardSpec], seed: int, images: Path) -> None:
    """Refuse to mix cards from another seed or generator version into a dataset.

    Existing PNGs are reused unverified (re-rendering them all would defeat
    incremental growth), and image names do not include the seed, so one sample
    card is re-rendered and compared.  Pixels are compared with a tolerance instead
    of bytes, so other zlib builds or last-bit float differences do not trip it.
    """
    existing = next((s for s in specs if (images / s.image_name).exists()), None)
    if existing is None:
        return
    with Image.open(images / existing.image_name) as img:
        on_disk = np.asarray(img.convert("RGB"), dtype=np.int16)
    expected = np.asarray(render_card(existing, seed), dtype=np.int16)
    if on_disk.shape != expected.shape or np.mean(np.abs(on_disk - expected) > 2) > 0.01:
        raise ValueError(
            f"{images / existing.image_name} was not generated with seed={seed} by this generator "
            "version; write into a fresh directory"
        )


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork: workers need no re-import of the caller's __main__ (stage scripts without a
    # main guard keep working); spawn elsewhere.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def write_dataset(
    out_dir: Path,
    n_cards: int,
    seed: int,
    test_fraction: float = 0.2,
    start: int = 0,
    url_prefix: str = "images/",
    *,
    workers: int | None = None,
) -> list[Path]:
    """Write ``out_dir/images/*.png`` plus ``metadata_dev.csv`` and ``metadata_test.csv``.

    Rows follow ``REGISTRY_COLUMNS`` and are sorted by id; ``url`` is
    ``url_prefix + image_name`` and ``hashlib_md5`` the md5 of the PNG bytes.

    Incremental use: a PNG that already exists is never re-rendered or rewritten
    (its md5 is read from disk); cards before index ``start`` must already exist.
    Image names carry no seed, so the first existing PNG that the plan names is
    re-rendered and compared: a same-named card left by another seed or generator
    version raises ``ValueError`` instead of silently mixing datasets.
    Because ``plan_cards`` has stable prefixes, growing ``n_cards`` with the same
    seed only adds files.  All writes are atomic (temp file + ``os.replace``) and
    rows are streamed, so memory does not grow with ``n_cards``.  Rendering is
    deterministic per card, so the output is identical for any ``workers`` count
    (default: all CPUs).  Returns ``[dev_csv, test_csv]``.
    """
    out_dir = Path(out_dir)
    if not 0 <= start <= n_cards:
        raise ValueError(f"start must be in [0, n_cards], got {start}")
    specs = plan_cards(n_cards, seed, test_fraction)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    _check_existing(specs, seed, images)
    jobs = (_Job(spec, seed, images / spec.image_name, i < start) for i, spec in enumerate(specs))
    # A pool only pays off beyond a handful of cards (fork + template warm-up).
    n_workers = max(1, min(workers if workers is not None else os.cpu_count() or 1, n_cards // 8))

    csv_paths = [out_dir / "metadata_dev.csv", out_dir / "metadata_test.csv"]
    tmp_files = [
        tempfile.NamedTemporaryFile("w", dir=out_dir, prefix=f".{p.name}.", suffix=".tmp", delete=False, newline="")
        for p in csv_paths
    ]
    try:
        writers = {split: csv.writer(fh, lineterminator="\n") for split, fh in zip(("dev", "test"), tmp_files)}
        for writer in writers.values():
            writer.writerow(REGISTRY_COLUMNS)
        with contextlib.ExitStack() as stack:
            if n_workers > 1:
                pool = stack.enter_context(_pool_context().Pool(n_workers))
                md5s: Iterator[str] = pool.imap(_materialise, jobs, chunksize=4)  # ordered
            else:
                md5s = map(_materialise, jobs)
            for spec, md5 in tqdm(zip(specs, md5s), total=n_cards, desc="synthetic PAD cards", unit="card"):
                row = (spec.id, spec.sample_id, spec.sample_name, spec.quantity, spec.camera_type)
                writers[spec.split].writerow((*row, url_prefix + spec.image_name, md5, spec.image_name))
        for fh, path in zip(tmp_files, csv_paths):
            fh.close()
            os.replace(fh.name, path)
    except BaseException:
        for fh in tmp_files:
            fh.close()
            Path(fh.name).unlink(missing_ok=True)
        raise
    return csv_paths
