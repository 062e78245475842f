"""Write the corruption goldens from the reference itself: imagecorruptions 1.1.2 (Michaelis et al., COCO-C).

Runs in the reference environment only (Python 3.10, numpy < 1.24, scikit-image 0.19; tools/README.md says how to
build it), never in the project's own environment:

    /work/refenv310/bin/python tools/corruption_goldens.py            # writes tests/goldens/corruptions/

For each test image, each of the 19 types and each severity it seeds the legacy global stream with
np.random.seed(seed) right before `imagecorruptions.corrupt`, so that evalstack's perturbation, given
np.random.RandomState(seed), replays the same draws in the same order (tests/test_corruption_fidelity.py).

One reference call is not seedable that way: scikit-image 0.19's `random_noise` (impulse_noise) draws from a fresh
`np.random.default_rng(None)`, i.e. OS entropy, so the reference's impulse noise differs on every run. Here its
Generator is seeded with one `np.random.randint(2**31)` drawn from the seeded global stream, which is what
evalstack's impulse_noise does with its RandomState.

The small images are stored whole with every output. The 640×480 image is stored whole, its outputs as a SHA-256
of the uint8 bytes plus a few crops (corners and centre: the borders are where implementations part), which keeps
the files at a few MB.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
from importlib.metadata import version
from pathlib import Path

import imagecorruptions
import numpy as np
import skimage.util
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parents[1] / "tests" / "goldens" / "corruptions"
SMALL_SHAPES = ((36, 48), (53, 67), (80, 80))  # (height, width): an odd size exercises the int(size * c) roundings
LARGE_SHAPE = (480, 640)
CROP = 24  # side of the stored crops of a large output
NAMES = imagecorruptions.get_corruption_names("all")  # the 15 benchmark types, then the 4 validation ones
_random_noise = skimage.util.random_noise


def crop_corners(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of the stored crops: the four image corners and the centre."""
    height, width = shape
    return [(0, 0), (0, width - CROP), (height - CROP, 0), (height - CROP, width - CROP),
            ((height - CROP) // 2, (width - CROP) // 2)]


def test_image(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A deterministic photo-like image: a smooth colour field, a few hard-edged shapes, mild sensor noise."""
    height, width = shape
    draws = np.random.RandomState(seed)
    coarse = draws.randint(0, 256, size=(4, 5, 3)).astype(np.uint8)
    field = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(6):
        x0, x1 = sorted(draws.randint(0, width, size=2))
        y0, y1 = sorted(draws.randint(0, height, size=2))
        colour = tuple(int(v) for v in draws.randint(0, 256, size=3))
        (draw.ellipse if draws.rand() < 0.5 else draw.rectangle)((x0, y0, x1 + 2, y1 + 2), fill=colour)
    field = field.filter(ImageFilter.GaussianBlur(0.6))
    noisy = np.asarray(field, dtype=np.int16) + draws.randint(-4, 5, size=(height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def seeded_random_noise(image, mode="gaussian", seed=None, clip=True, **kwargs):
    """skimage's random_noise with its Generator seeded from the global stream (see the module docstring)."""
    return _random_noise(image, mode=mode, seed=np.random.randint(2**31), clip=clip, **kwargs)


def seed_of(image_index: int, type_index: int, severity: int) -> int:
    return 10_000 + 1_000 * image_index + 10 * type_index + severity


def reference(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    np.random.seed(seed)
    return imagecorruptions.corrupt(image, severity=severity, corruption_name=name)


def versions() -> dict[str, str]:
    packages = ("imagecorruptions", "numpy", "scipy", "scikit-image", "opencv-python", "Pillow")
    return {"python": platform.python_version(), **{name: version(name) for name in packages}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    skimage.util.random_noise = seeded_random_noise  # imagecorruptions calls it as sk.util.random_noise
    args.out.mkdir(parents=True, exist_ok=True)

    small: dict[str, np.ndarray] = {}
    for index, shape in enumerate(SMALL_SHAPES):
        image = test_image(shape, seed=index)
        small[f"{index}/image"] = image
        for type_index, name in enumerate(NAMES):
            for severity in range(1, 6):
                seed = seed_of(index, type_index, severity)
                small[f"{index}/{name}/{severity}"] = reference(image, name, severity, seed)
    np.savez_compressed(args.out / "small.npz", **small)

    index = len(SMALL_SHAPES)
    image = test_image(LARGE_SHAPE, seed=index)
    large: dict[str, np.ndarray] = {"image": image}
    corners = crop_corners(LARGE_SHAPE)
    for type_index, name in enumerate(NAMES):
        for severity in range(1, 6):
            out = reference(image, name, severity, seed_of(index, type_index, severity))
            large[f"{name}/{severity}/sha256"] = np.asarray(hashlib.sha256(out.tobytes()).hexdigest())
            large[f"{name}/{severity}/crops"] = np.stack([out[r:r + CROP, c:c + CROP] for r, c in corners])
    np.savez_compressed(args.out / "large.npz", **large)

    meta = {"reference": versions(), "names": NAMES, "small_shapes": SMALL_SHAPES, "large_shape": LARGE_SHAPE,
            "large_index": index, "crop": CROP, "crop_corners": corners,
            "seed": "10000 + 1000 * image index + 10 * type index (in names) + severity"}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for path in sorted(args.out.iterdir()):
        print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
