"""Stage report: every metric and plot declared in dvc.yaml → reports/report.md with PNG figures."""
import argparse
from pathlib import Path

from evalstack.config import load_params
from evalstack.reporting.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output directory, relative to the repo root")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    compare = list(load_params(args.params)["report"]["compare"])
    report = write_report(Path.cwd(), args.out, compare)
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
