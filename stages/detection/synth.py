"""Detection stage synth: write the embedded shapes-in-COCO dataset (PNGs + instances JSON per split)."""
import argparse
from pathlib import Path

from evalstack.config import load_params
from evalstack.core.failures import run_stage
from evalstack.demo.shapes.dataset import ShapesConfig, write_shapes_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    paths = write_shapes_dataset(args.out, ShapesConfig(**load_params(args.params)["synth"]))
    print("annotations: " + ", ".join(f"{split} → {path}" for split, path in paths.items()))


if __name__ == "__main__":
    run_stage(main)
