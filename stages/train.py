"""Stage train: fit a demo model on the dev split (real users bring their own files)."""
import argparse
from pathlib import Path

from evalstack.config import load_params, train_entry
from evalstack.core.failures import run_stage
from evalstack.core.names import project_output
from evalstack.demo.training.networks import TrainConfig, train_demo_model
from evalstack.models.adapters import end_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="name under train:")
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--preprocessed", type=Path, required=True)
    parser.add_argument("--out", type=project_output, required=True, help="model file to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    labels, entry = train_entry(load_params(args.params), args.model)
    train_demo_model(args.preprocessed, args.raw, labels, TrainConfig(**entry), args.out, args.model)


if __name__ == "__main__":
    run_stage(main)
    end_process()  # TensorFlow/torch teardown would add seconds to every run
