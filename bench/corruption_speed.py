"""Time per image of each corruption type, ours against the reference (imagecorruptions 1.1.2), each in its own
environment on the same machine (issue 25: ours no slower than the reference).

    PYTHONPATH=src python bench/corruption_speed.py                       # both, prints a markdown table
    PYTHONPATH=src python bench/corruption_speed.py --rounds 1 --sizes 640x480

The driver runs this file again per type, alternately `--measure ours` with this interpreter and `--measure
reference` with the reference environment's (tools/README.md builds it), each printing JSON: alternating type by
type keeps a change in the machine's load (other jobs on its 2 cores) from favouring one side. Both measure one
thread (OpenCV's threads and BLAS pinned to 1: a grid runs one corruption per worker), the same deterministic
photo-like images, every severity, after one warm-up call per type and size (our frost caches its rescaled
photograph per size, as a grid over same-sized images would use it). A cell is the fastest over the rounds of the
mean over the 5 severities (the minimum: the least disturbed run).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REFERENCE_PYTHON = "/work/refenv310/bin/python"
SIZES = ("454x454", "640x480")  # width × height: the PAD cards, a COCO-sized image
NAMES = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
         "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
         "speckle_noise", "gaussian_blur", "spatter", "saturate")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_image(width: int, height: int):
    """Smooth colour field with hard-edged blocks and mild noise (what tools/corruption_goldens.py uses, numpy only)."""
    import numpy as np

    draws = np.random.RandomState(width * 1000 + height)
    rows, cols = np.mgrid[0:height, 0:width] / max(width, height)
    field = np.stack([128 + 100 * np.sin(6 * rows + k) * np.cos(5 * cols - k) for k in range(3)], axis=-1)
    for _ in range(8):
        top, left = draws.randint(0, height - 20), draws.randint(0, width - 20)
        field[top:top + draws.randint(10, height // 3), left:left + draws.randint(10, width // 3)] = draws.randint(
            0, 256, size=3)
    return np.clip(field + draws.randint(-4, 5, size=field.shape), 0, 255).astype(np.uint8)


def corruption(which: str, name: str):
    """(image, severity, seed) -> corrupted image, for our code or the reference's."""
    import numpy as np

    if which == "reference":
        import imagecorruptions

        def run(image, severity, seed):
            np.random.seed(seed)
            return imagecorruptions.corrupt(image, severity=severity, corruption_name=name)
        return run
    from evalstack.preprocess import perturbations

    function = perturbations.PERTURBATIONS["jpeg" if name == "jpeg_compression" else name]
    return lambda image, severity, seed: function(image, severity, np.random.RandomState(seed))


def measure(which: str, name: str, sizes: list[str], round_: int) -> dict[str, float]:
    """Seconds per image of one type on one side, per size: the mean over the 5 severities."""
    import cv2

    cv2.setNumThreads(1)
    run = corruption(which, name)
    results: dict[str, float] = {}
    for size in sizes:
        width, height = (int(v) for v in size.split("x"))
        image = test_image(width, height)
        run(image, 3, 0)  # warm-up: imports, the frost photograph
        start = time.perf_counter()
        for severity in range(1, 6):
            run(image, severity, 100 * round_ + severity)
        results[size] = (time.perf_counter() - start) / 5
    return results


def measured(python: str, which: str, name: str, sizes: list[str], round_: int) -> dict[str, float]:
    command = [python, str(Path(__file__).resolve()), "--measure", which, "--name", name, "--sizes", ",".join(sizes),
               "--round", str(round_)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    return json.loads(out.stdout)


def table(ours: dict, reference: dict, sizes: list[str]) -> str:
    header = "| type | " + " | ".join(f"{s} ours ms | {s} reference ms | ratio" for s in sizes) + " |"
    lines = [header, "|" + "---|" * (1 + 3 * len(sizes))]
    totals = {s: [0.0, 0.0] for s in sizes}
    for name in NAMES:
        cells = []
        for size in sizes:
            a, b = ours[name][size], reference[name][size]
            totals[size][0] += a
            totals[size][1] += b
            cells.append(f"{1000 * a:.1f} | {1000 * b:.1f} | {a / b:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **all 19** | " + " | ".join(f"{1000 * a:.0f} | {1000 * b:.0f} | {a / b:.2f}"
                                               for a, b in totals.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", choices=("ours", "reference"), help="(internal) time one side, print JSON")
    parser.add_argument("--reference-python", default=REFERENCE_PYTHON)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", choices=NAMES, help="(internal, with --measure) the type to time")
    parser.add_argument("--round", type=int, default=0, dest="round_", help="(internal) seeds differ per round")
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    if args.measure:
        print(json.dumps(measure(args.measure, args.name, sizes, args.round_)))
        return
    if not Path(args.reference_python).exists():
        sys.exit(f"no reference environment at {args.reference_python}: build it as tools/README.md says, "
                 "or pass --reference-python")
    pythons = {"ours": sys.executable, "reference": args.reference_python}
    best: dict[str, dict[str, dict[str, float]]] = {side: {} for side in pythons}
    for round_ in range(args.rounds):
        for name in NAMES:
            for side, python in pythons.items():
                times = measured(python, side, name, sizes, round_)
                cell = best[side].setdefault(name, {})
                for size, seconds in times.items():
                    cell[size] = min(seconds, cell.get(size, float("inf")))
    print(table(best["ours"], best["reference"], sizes))


if __name__ == "__main__":
    main()
