"""Stage synth: write the embedded FHI2020-style dataset (PNG cards + registry CSVs)."""
import argparse
from pathlib import Path

from evalstack.config import load_params
from evalstack.core.failures import run_stage
from evalstack.demo.cards import write_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    synth = load_params(args.params)["synth"]
    write_dataset(args.out, n_cards=int(synth["n_cards"]), seed=int(synth["seed"]),
                  test_fraction=float(synth["test_fraction"]))


if __name__ == "__main__":
    run_stage(main)
