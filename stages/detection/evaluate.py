"""Detection stage evaluate: detections of one model on one split → COCO metrics, plots, per-image table."""
import argparse
from pathlib import Path

from evalstack.config import load_params, model_spec
from evalstack.detection.adapter import load_detector
from evalstack.detection.evaluation import DetectionOutputs, evaluate_detector, write_detection_outputs
from evalstack.preprocess.letterbox import build_letterbox


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="name under models:")
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--detections", type=Path, required=True)
    for name in ("metrics", "per-class", "pr-curve", "per-image", "results"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    spec = model_spec(params, args.model)
    # The adapter recomputes the model signature, so detections from another model or threshold are refused.
    signature = load_detector(spec).signature()
    pipeline_key = build_letterbox(params["preprocess"]["pipelines"][spec.pipeline]).cache_key()
    split, threshold = params["evaluate"]["split"], float(params["evaluate"]["count_threshold"])
    report, results, names, passes = evaluate_detector(
        args.raw, args.detections, spec, signature, pipeline_key, split, threshold
    )
    outputs = DetectionOutputs(args.metrics, args.per_class, args.pr_curve, args.per_image, args.results)
    write_detection_outputs(report, results, names, passes, outputs)
    print(f"{args.model} on {split}: mAP {report.stats['mAP']:.4f}, mAP@.5 {report.stats['mAP50']:.4f}, "
          f"AR@100 {report.stats['AR100']:.4f}")


if __name__ == "__main__":
    main()
