"""Stage fit_pls: the demo PLS concentration model (per-drug PLSRegression on the dev split)."""
import argparse
from pathlib import Path

from evalstack.config import load_params
from evalstack.core.failures import run_stage
from evalstack.core.names import project_output
from evalstack.demo.training.pls import PLSFitConfig, fit_pls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True, help="pad_regions preprocessed layer")
    parser.add_argument("--out", type=project_output, required=True, help="coefficient CSV to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    entry = dict(load_params(args.params)["fit_pls"])
    for unused in ("file", "pipeline"):  # consumed by dvc.yaml
        entry.pop(unused, None)
    fitted = fit_pls(args.features, args.raw, PLSFitConfig(**entry), args.out)
    print(f"pls: coefficients for {len(fitted.drugs)} drugs → {args.out}")


if __name__ == "__main__":
    run_stage(main)
