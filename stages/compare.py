"""Stage compare: every declared model on the same test items → Markdown, CSV tables, a plot."""
import argparse
from pathlib import Path

from evalstack.config import load_params
from evalstack.core.failures import run_stage
from evalstack.evaluation.comparison import CompareConfig, compare_runs, declared_run
from evalstack.evaluation.items import truth_frame
from evalstack.reporting.comparison_report import ReportOutputs, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True, help="folder of predictions layers")
    parser.add_argument("--out", type=Path, required=True, help="folder for the comparison tables (*.csv)")
    parser.add_argument("--plot", type=Path, required=True, help="CSV for `dvc plots`")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    settings = params.get("compare") or {}
    config = CompareConfig(
        split=params["evaluate"]["split"],
        n_resamples=int(settings.get("bootstrap_resamples", 2000)),
        seed=int(settings.get("seed", 0)),
        level=float(settings.get("level", 0.95)),
    )
    runs = [declared_run(params, name, args.predictions, None) for name in params["models"]]  # no measurements
    comparison = compare_runs(runs, truth_frame(args.raw), config)
    write_report(comparison, ReportOutputs(args.out, args.plot), config.split, config.level)
    print(comparison.summary.to_string(index=False))


if __name__ == "__main__":
    run_stage(main)
