"""Stage robustness_report: every model's grid summary → CE / mCE against the reference, plots, report."""
import argparse
import json
from pathlib import Path

from evalstack.config import load_params
from evalstack.core.failures import run_stage
from evalstack.evaluation.robustness_metrics import combine
from evalstack.reporting.robustness_report import write_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--summaries", type=Path, required=True, help="directory of per-model grid summaries")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="directory for per (model, type) CSVs")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    models = sorted(params.get("models") or {})
    summaries = {name: json.loads((args.summaries / f"{name}.json").read_text()) for name in models}
    summaries = {name: summary for name, summary in summaries.items() if "skipped" not in summary}
    metrics = combine(summaries, str(params["robustness"]["reference"]))
    write_outputs(metrics, args.metrics, args.plots)
    for name, model in metrics["models"].items():
        print(f"{name}: clean accuracy {model['clean_accuracy']:.3f}, mCE {model['mce']}, relative mCE {model['relative_mce']}")


if __name__ == "__main__":
    run_stage(main)
