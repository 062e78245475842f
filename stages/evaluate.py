"""Stage evaluate: every declared model's predictions on one split → DVC metrics and plots, in one process."""
import argparse
from pathlib import Path

from evalstack.cache.shardstore import open_store
from evalstack.config import load_params
from evalstack.core.failures import run_stage
from evalstack.evaluation.all_models import EvaluateLayout, evaluate_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True, help="folder of predictions layers, one per model")
    parser.add_argument("--metrics", type=Path, required=True, help="folder: <model>.json, the headline for `dvc metrics`")
    parser.add_argument("--details", type=Path, required=True, help="folder: <model>.json, every summary figure")
    parser.add_argument("--plots", type=Path, required=True, help="folder: <task>/pairs/<model>.csv and <task>/per_class/<model>.csv")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    layout = EvaluateLayout(args.raw, args.predictions, args.metrics, args.details, args.plots)
    results = evaluate_models(params, layout, open_store(params, args.params.parent))
    split = params["evaluate"]["split"]
    for result in results:
        figures = ", ".join(f"{name} {value}" for name, value in result.headline.items())
        print(f"{result.name} on {split}: {figures}{' (from the store)' if result.reused else ''}")
    print(f"evaluated {sum(not r.reused for r in results)} of {len(results)} models; "
          f"{sum(r.reused for r in results)} written from the store")


if __name__ == "__main__":
    run_stage(main)
