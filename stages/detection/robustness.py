"""Detection stage robustness: grid cells → post-processed cells, mAP per cell, mPC, rPC, consistency."""
import argparse
from pathlib import Path

from evalstack.cache.shardstore import open_store
from evalstack.config import load_params, model_spec
from evalstack.core.failures import run_stage
from evalstack.detection.decoding import PostProcess
from evalstack.detection.evaluation import Scoring
from evalstack.detection.grid import GridConfig
from evalstack.detection.grid_report import write_grid_outputs
from evalstack.detection.robustness import score_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="name under models:")
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--detections", type=Path, required=True, help="the clean detections (postprocess's layer)")
    parser.add_argument("--cells", type=Path, required=True, help="the grid's candidates layers")
    parser.add_argument("--out", type=Path, required=True, help="directory of post-processed cell layers")
    for name in ("metrics", "plots", "details"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    spec = model_spec(params, args.model)
    store = open_store(params, args.params.parent)
    scores = score_grid(args.raw, args.detections, args.cells, args.out, spec, PostProcess.from_options(spec.options),
                        GridConfig.from_params(params["grid"]), Scoring.from_params(params["evaluate"]), store,
                        workers=int((params.get("local") or {}).get("workers", 1)))  # in no key: scores do not change
    summary = scores.summary()
    write_grid_outputs(summary, args.metrics, args.plots, args.details)
    counts = summary["counts"]
    print(f"{args.model}: P_clean {summary['P_clean']:.4f}, mPC {summary['mPC']:.4f}, rPC {summary['rPC'] or 0:.4f} "
          f"over {counts['cells']} cells; {scores.images_postprocessed} images post-processed, 0 forward passes")


if __name__ == "__main__":
    run_stage(main)
