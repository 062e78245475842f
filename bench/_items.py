"""P12's dataset: many small synthetic images (64×64 PNG) in PAD's registry layout.

Every image is drawn from its own generator seeded by its id, so the first N items are the
same whatever N the registry is written for, and growing it only renders the new ones.
Each image shows its class as a pattern (stripes at a class-specific angle and period, in a
class-specific colour) under noise, so a small CNN learns it and the benchmark's model is a
trained one, not one at chance.

    <root>/images/0000001.png …          one file per item (written once, kept between runs)
    <root>/registry_<N>_dev.csv, _test.csv   the first N items, split by sample (4 photos each)

The baseline a user has without evalstack, `plain_run`, is here too: one process that reads
the registry, checks md5s, decodes, preprocesses and runs the model in batches, and computes
accuracy; no caching.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from evalstack.demo.cards import encode_png

SIDE = 64
CLASSES = ("circle", "cross", "diamond", "dots", "grid", "ring", "stripe", "square", "star", "wave")
PHOTOS_PER_SAMPLE = 4
TEST_FRACTION = 0.2
PIPELINE = {"kind": "crop_resize", "crop": [0, 0, SIDE, SIDE], "resize": 32, "resample": "bilinear"}


def sample_of(item_id: int) -> int:
    return (item_id - 1) // PHOTOS_PER_SAMPLE + 1


def class_of(sample_id: int) -> int:
    return int.from_bytes(hashlib.sha256(f"class:{sample_id}".encode()).digest()[:4], "little") % len(CLASSES)


_Y, _X = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)


def render(item_id: int) -> bytes:
    """The PNG of one item: its class's stripes (angle, period, colour) under per-item noise."""
    rng = np.random.default_rng(item_id)
    label = class_of(sample_of(item_id))
    angle = np.pi * label / len(CLASSES) + rng.normal(0, 0.05)
    period = 6 + label % 4 * 3
    phase = (_X * np.float32(np.cos(angle)) + _Y * np.float32(np.sin(angle))) * np.float32(2 * np.pi / period)
    wave = np.sin(phase + np.float32(rng.uniform(0, 2 * np.pi)))
    colour = np.array([(label * 53) % 256, (label * 97 + 80) % 256, (label * 31 + 160) % 256], np.float32)
    image = rng.standard_normal((SIDE, SIDE, 3), dtype=np.float32)
    image *= 8
    image += wave[..., None] * ((colour - 128) * np.float32(0.8)) + np.float32(128)
    return encode_png(np.clip(image, 0, 255).astype(np.uint8))  # Pillow's encoder costs 5× more per small image


def _render_range(args: tuple[str, int, int]) -> list[tuple[int, str]]:
    """Write items [start, stop) that are missing; (id, md5) of each."""
    images, start, stop = Path(args[0]), args[1], args[2]
    out = []
    for item_id in range(start, stop):
        path = images / image_name(item_id)
        if path.exists():
            data = path.read_bytes()
        else:
            data = render(item_id)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        out.append((item_id, hashlib.md5(data).hexdigest()))
    return out


def image_name(item_id: int) -> str:
    return f"{item_id:07d}.png"


def write_items(root: Path, n_items: int, workers: int = 2) -> dict[str, Path]:
    """Images 1..n_items (only missing ones rendered) and the registry CSVs of the first n_items;
    returns split → registry path."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    registries = {split: root / f"registry_{n_items}_{split}.csv" for split in ("dev", "test")}
    if all(path.exists() for path in registries.values()):
        return registries
    step = 5000
    ranges = [(str(images), start, min(start + step, n_items + 1)) for start in range(1, n_items + 1, step)]
    from evalstack.sources.registry import REGISTRY_COLUMNS, split_for

    handles = {split: open(path.with_suffix(".tmp"), "w", newline="") for split, path in registries.items()}
    writers = {split: csv.writer(handle) for split, handle in handles.items()}
    for writer in writers.values():
        writer.writerow(REGISTRY_COLUMNS)
    with ProcessPoolExecutor(workers) as pool:
        for chunk in pool.map(_render_range, ranges):
            for item_id, md5 in chunk:
                sample = sample_of(item_id)
                split = split_for(sample, TEST_FRACTION)
                writers[split].writerow([item_id, sample, CLASSES[class_of(sample)], 0, "synthetic",
                                         f"images/{image_name(item_id)}", md5, image_name(item_id)])
    for split, handle in handles.items():
        handle.close()
        os.replace(handle.name, registries[split])
    return registries


def preprocess(data: bytes) -> np.ndarray:
    """The P12 pipeline (crop_resize, PIPELINE) as the plain script applies it."""
    from evalstack.preprocess.pipelines import build_pipeline

    return build_pipeline(PIPELINE).process_image(Image.open(io.BytesIO(data)))


def train_model(root: Path, out: Path, n_train: int = 1200, epochs: int = 2) -> None:
    """A small CNN (the demo's torch.export trainer) on the first n_train dev items. Trained briefly on
    purpose: ~70 % test accuracy, so the comparison with the plain script checks errors too."""
    from evalstack.demo.training.networks import TRAINERS, TrainConfig
    from evalstack.demo.training.rows import ArrayRows
    from evalstack.preprocess.pipelines import build_pipeline

    pipeline = build_pipeline(PIPELINE)
    registry = write_items(root, n_train)["dev"]
    with open(registry, newline="") as handle:
        rows = list(csv.DictReader(handle))
    x = np.stack([pipeline.process_image(Image.open(root / row["url"])) for row in rows])
    y = np.asarray([CLASSES.index(row["sample_name"]) for row in rows], dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = TrainConfig("torch_export", epochs=epochs, batch_size=32)
    TRAINERS["torch_export"](ArrayRows(x, y), len(CLASSES), config, out)


def plain_run(registries: dict[str, Path], model_file: Path, split: str = "test", batch_size: int = 256) -> float:
    """Accuracy on `split`, the way a script without evalstack computes it: read every registry row,
    check the md5, decode, preprocess, run the model in batches (every item is preprocessed and
    inferred, as the pipeline does; the accuracy counts `split`)."""
    import torch

    from evalstack.preprocess.pipelines import build_pipeline

    pipeline = build_pipeline(PIPELINE)
    module = torch.export.load(str(model_file)).module()
    correct = total = 0
    for name, registry in registries.items():
        with open(registry, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            tensors = []
            for row in chunk:
                data = (registry.parent / row["url"]).read_bytes()
                if hashlib.md5(data).hexdigest() != row["hashlib_md5"]:
                    raise SystemExit(f"{row['url']}: md5 mismatch")
                tensors.append(pipeline.process_image(Image.open(io.BytesIO(data))))
            with torch.inference_mode():
                predicted = module(torch.from_numpy(np.stack(tensors).astype(np.float32))).argmax(1).numpy()
            if name == split:
                truth = np.asarray([CLASSES.index(row["sample_name"]) for row in chunk])
                correct += int((predicted == truth).sum())
                total += len(chunk)
    return correct / max(total, 1)
