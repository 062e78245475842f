"""The embedded detection dataset: coloured shapes on textured backgrounds, in COCO format.

Every image draws from its own numpy Generator seeded by a sha256 of
(seed, split, index), so an image never depends on how many others are made or
in which order. Images vary in size (so letterboxing and the box mapping back
are exercised), objects vary in scale and may partly hide each other, and some
images hold no object at all (so zero-ground-truth images are always present).

Output, the usual COCO layout:

    <out>/annotations/instances_<split>.json
    <out>/images/<split>/<image id>.png
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from evalstack.core.atomic import atomic_write_bytes
from evalstack.demo.cards import encode_png

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SPLIT_ID_BASE = {"train": 0, "val": 1_000_000}  # image ids stay unique across splits
MAX_COVERED = 0.5  # partial occlusion only: a new shape covers at most half of an older one's box


@dataclass(frozen=True)
class ShapesConfig:
    n_train: int = 1200
    n_val: int = 300
    seed: int = 0
    min_side: int = 160  # image sides are drawn from [min_side, max_side]
    max_side: int = 256
    max_objects: int = 6
    empty_fraction: float = 0.1  # share of images with no object
    min_object: int = 14  # object box side in pixels, drawn log-uniformly
    max_object: int = 72

    def __post_init__(self) -> None:
        if not 8 <= self.min_object <= self.max_object <= self.min_side:
            raise ValueError("need 8 <= min_object <= max_object <= min_side")


@dataclass(frozen=True)
class ShapeObject:
    category: int  # index into SHAPES
    bbox: tuple[float, float, float, float]  # COCO xywh, tight around the drawn pixels
    area: int  # drawn pixels (before later shapes cover some of them)


def _rng(*key: object) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(repr(k) for k in key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Muted base colour + gradient + stripes + noise: texture a detector must learn to ignore."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    gradient = rng.uniform(-40, 40, size=(2, 3)).astype(np.float32)
    image = base + (x / width)[..., None] * gradient[0] + (y / height)[..., None] * gradient[1]
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
    stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
    image += stripes[..., None] * rng.uniform(5, 25) * rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    image += rng.normal(0, rng.uniform(3, 12), size=image.shape).astype(np.float32)
    return image


def _shape_mask(category: int, width: int, height: int, box: tuple[int, int, int, int], rng) -> np.ndarray:
    x0, y0, w, h = box
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if SHAPES[category] == "circle":
        draw.ellipse((x0, y0, x0 + w - 1, y0 + h - 1), fill=255)
    elif SHAPES[category] == "square":
        draw.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=255)
    else:  # a triangle with its apex on a random side
        corners = [(x0, y0 + h - 1), (x0 + w - 1, y0 + h - 1), (x0 + (w - 1) / 2, y0)]
        if rng.random() < 0.5:
            corners = [(cx, 2 * y0 + h - 1 - cy) for cx, cy in corners]
        draw.polygon(corners, fill=255)
    return np.asarray(mask) > 0


def _covered(new: tuple[float, ...], old: tuple[float, ...]) -> float:
    """Share of `old`'s box that `new` (drawn on top) covers."""
    ix = max(0.0, min(new[0] + new[2], old[0] + old[2]) - max(new[0], old[0]))
    iy = max(0.0, min(new[1] + new[3], old[1] + old[3]) - max(new[1], old[1]))
    return ix * iy / (old[2] * old[3])


def render_image(config: ShapesConfig, split: str, index: int) -> tuple[np.ndarray, list[ShapeObject]]:
    """One image (H, W, 3) uint8 and its objects, fixed by (seed, split, index)."""
    rng = _rng("shapes", config.seed, split, index)
    width, height = (int(v) for v in rng.integers(config.min_side, config.max_side + 1, size=2))
    image = _background(rng, width, height)
    n_objects = 0 if rng.random() < config.empty_fraction else int(rng.integers(1, config.max_objects + 1))
    objects: list[ShapeObject] = []
    for _ in range(n_objects * 4):  # placement attempts; crowded images keep fewer objects
        if len(objects) == n_objects:
            break
        side = float(np.exp(rng.uniform(np.log(config.min_object), np.log(config.max_object))))
        aspect = float(np.exp(rng.uniform(-0.3, 0.3)))
        w, h = max(6, round(side * aspect)), max(6, round(side / aspect))
        if w >= width or h >= height:
            continue
        box = (int(rng.integers(0, width - w)), int(rng.integers(0, height - h)), w, h)
        if any(_covered(box, other.bbox) > MAX_COVERED for other in objects):
            continue
        category = int(rng.integers(len(SHAPES)))
        mask = _shape_mask(category, width, height, box, rng)
        colour = rng.uniform(0, 255, size=3)
        colour[rng.integers(3)] = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])  # saturated
        image[mask] = colour * rng.uniform(0.85, 1.0) + rng.normal(0, 4, size=(int(mask.sum()), 3))
        ys, xs = np.nonzero(mask)
        tight = (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))
        objects.append(ShapeObject(category, tight, int(mask.sum())))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


def categories() -> list[dict[str, Any]]:
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]


def write_split(out_dir: Path, config: ShapesConfig, split: str, n_images: int) -> Path:
    """Write one split's PNGs and its instances JSON; returns the JSON path."""
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in tqdm(range(n_images), desc=f"shapes {split}", unit="image"):
        pixels, objects = render_image(config, split, index)
        image_id = SPLIT_ID_BASE[split] + index + 1
        file_name = f"{image_id:07d}.png"
        atomic_write_bytes(image_dir / file_name, encode_png(pixels))
        images.append({"id": image_id, "file_name": file_name, "width": pixels.shape[1], "height": pixels.shape[0]})
        for obj in objects:
            annotations.append({
                "id": len(annotations) + 1 + SPLIT_ID_BASE[split],
                "image_id": image_id,
                "category_id": obj.category + 1,
                "bbox": list(obj.bbox),
                "area": float(obj.area),
                "iscrowd": 0,
            })
    document = {
        "info": {"description": f"evalstack synthetic shapes, seed {config.seed}, split {split}"},
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }
    path = out_dir / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(document, sort_keys=True, separators=(",", ":")).encode())
    return path


def write_shapes_dataset(out_dir: Path, config: ShapesConfig) -> dict[str, Path]:
    """Both splits; returns split → annotations JSON path."""
    out_dir = Path(out_dir)
    return {split: write_split(out_dir, config, split, n) for split, n in (("train", config.n_train), ("val", config.n_val))}
