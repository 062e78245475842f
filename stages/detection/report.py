"""Detection stage report: every declared metric and plot + the corruption grid's table and curves → reports/."""
import argparse
from pathlib import Path

from evalstack.config import load_params
from evalstack.detection.grid_report import load_summaries, render_section, write_figure
from evalstack.reporting.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--robustness", type=Path, required=True, help="the robustness details JSONs")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    summaries = load_summaries(args.robustness)
    figure = "figures/robustness.png" if summaries else None
    if figure:
        write_figure(summaries, args.out / figure)
    compare = list(load_params(args.params).get("report", {}).get("compare", ["mAP", "mAP50", "mPC", "rPC"]))
    report = write_report(Path.cwd(), args.out, compare, render_section(summaries, figure))
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
