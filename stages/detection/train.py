"""Detection stage train: fit the demo detector on one split (real users bring their own model file)."""
import argparse
from pathlib import Path

from evalstack.config import load_params, train_entry
from evalstack.core.failures import run_stage
from evalstack.core.names import project_output
from evalstack.demo.training import portable_kernels

portable_kernels()  # before the detector module loads torch: the same weights on any x86-64 CPU
from evalstack.demo.training.detector import DetectorTrainConfig, load_training_set, train_detector  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="name under train:")
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--preprocessed", type=Path, required=True)
    parser.add_argument("--out", type=project_output, required=True, help="model file to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    labels, entry = train_entry(load_params(args.params), args.model)
    config = DetectorTrainConfig(**entry)
    data = load_training_set(args.preprocessed, args.raw, labels, config.split, config.max_items, args.model)
    print(f"training {args.model} on {len(data.images)} {config.split} images, {len(labels)} classes")
    train_detector(data, len(labels), config, args.out)


if __name__ == "__main__":
    run_stage(main)
