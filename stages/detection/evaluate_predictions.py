"""Detection stage evaluate_predictions: a COCO results JSON computed elsewhere → the same metrics, plots and tables
as a model's evaluate (no model: no forward pass, no post-processing, no corruption grid)."""
import argparse
from pathlib import Path

from evalstack.config import load_params
from evalstack.core.failures import run_stage
from evalstack.detection.evaluation import DetectionOutputs, Scoring, write_detection_outputs
from evalstack.detection.predictions import evaluate_predictions, predictions_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="name under predictions:")
    parser.add_argument("--raw", type=Path, required=True)
    for name in ("metrics", "per-class", "pr-curve", "per-image", "results", "details"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    spec = predictions_spec(params, args.name, args.params.parent)
    split, scoring = params["evaluate"]["split"], Scoring.from_params(params["evaluate"])
    evaluation = evaluate_predictions(args.raw, spec, split, scoring)
    outputs = DetectionOutputs(args.metrics, args.per_class, args.pr_curve, args.per_image, args.results, args.details)
    write_detection_outputs(evaluation, split, outputs)
    stats = evaluation.report.stats
    print(f"{args.name} ({spec.file}, {len(evaluation.results)} detections) on {split}: mAP {stats['mAP']:.4f}, "
          f"mAP@.5 {stats['mAP50']:.4f}, AR@100 {stats['AR100']:.4f} (AP: {scoring.ap}); 0 forward passes")


if __name__ == "__main__":
    run_stage(main)
