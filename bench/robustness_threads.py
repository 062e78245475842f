"""The robustness stage perturbing in one thread and in `local.workers` threads, side by side in one run.

The template's default grid (3 types × 5 severities on the test split) for `tflite_cnn`, whose pipeline
(pad_nn) hands the perturbations 454×454 images: the stage that dominated P10 at 8,001 cards. A project of
`--cards` cards is built up to the clean predictions (`dvc repro infer@tflite_cnn`); then the stage's own
command runs with `local.workers: 1` and with 2, each with an empty shard store, alternating, and the
two grids must be byte-identical before their times are compared.

    PYTHONPATH=src python bench/robustness_threads.py [--cards 1000] [--repeats 2]
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from _full import full_project  # noqa: E402

from tests.e2e import run  # noqa: E402

MODEL = "tflite_cnn"


def grid_digests(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def stage_seconds(project: Path, workers: int, name: str) -> tuple[float, dict[str, str]]:
    """The robustness stage's command, `local.workers: workers`, an empty store: (seconds, output digests)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["local"]["workers"] = workers
    params["store"]["dir"] = f".bench-store-{name}"
    shutil.rmtree(project / params["store"]["dir"], ignore_errors=True)
    (project / f"params-{name}.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pipeline = params["models"][MODEL]["pipeline"]
    out = project / f"bench-grid-{name}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    run(project, sys.executable, "stages/robustness.py", "--model", MODEL, "--raw", "data/raw", "--preprocessed",
        f"data/preprocessed/{pipeline}", "--predictions", f"data/predictions/{MODEL}", "--out", str(out),
        "--summary", f"bench-{name}.json", "--params", f"params-{name}.yaml")
    seconds = time.monotonic() - started
    return seconds, grid_digests(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--project", type=Path, default=BENCH / "out/robustness_threads")
    args = parser.parse_args()
    shutil.rmtree(args.project, ignore_errors=True)
    # P10's project (the template's own grid and sizes; hardlinked store and DVC cache: copies of 8,001 cards
    # fill ~60 GB)
    project = full_project(args.project, args.cards, tiny=False)
    run(project, "dvc", "repro", f"infer@{MODEL}")
    config = yaml.safe_load((project / "params.yaml").read_text())["robustness"]
    times: dict[int, list[float]] = {1: [], 2: []}
    reference = None
    for repeat in range(args.repeats):
        for workers in (1, 2):
            seconds, digests = stage_seconds(project, workers, f"{workers}-{repeat}")
            reference = reference or digests
            assert digests == reference, f"the grid with {workers} threads differs from the first grid"
            times[workers].append(seconds)
    best = {workers: min(values) for workers, values in times.items()}
    print(f"robustness@{MODEL}, {args.cards} cards, {len(config['types'])} types × {len(config['severities'])} "
          f"severities on the {config['split']} split, {len(reference)} files, byte-identical in every run")
    for workers, values in times.items():
        print(f"  local.workers {workers}: " + ", ".join(f"{v:.1f} s" for v in values) + f" (best {best[workers]:.1f} s)")
    print(f"  speed-up with 2 threads: {best[1] / best[2]:.2f}×")
    shutil.rmtree(args.project, ignore_errors=True)


if __name__ == "__main__":
    main()
