"""Detection stage evaluate: detections of one model on one split → COCO metrics, plots, per-image table."""
import argparse
from pathlib import Path

from evalstack.cache.shardstore import open_store
from evalstack.config import infer_batch_size, load_params, model_spec
from evalstack.core.failures import run_stage
from evalstack.detection.evaluation import DetectionOutputs, Scoring, evaluate_detector, write_detection_outputs
from evalstack.detection.signatures import expected_detections_key
from evalstack.preprocess.letterbox import build_letterbox


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="name under models:")
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--detections", type=Path, required=True)
    for name in ("metrics", "per-class", "pr-curve", "per-image", "results", "details"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    spec = model_spec(params, args.model)
    store = open_store(params, args.params.parent)
    # The model's signature is recomputed (or taken from a memo under a key naming everything it depends on:
    # detection/signatures.py), so detections of another model or post-processing are refused.
    pipeline_key = build_letterbox(params["preprocess"]["pipelines"][spec.pipeline]).cache_key()
    expected = expected_detections_key(spec, pipeline_key, store, infer_batch_size(params))
    split, scoring = params["evaluate"]["split"], Scoring.from_params(params["evaluate"])
    evaluation = evaluate_detector(args.raw, args.detections, spec, expected, split, scoring,
                                   store.stamps.sha256 if store else None)
    outputs = DetectionOutputs(args.metrics, args.per_class, args.pr_curve, args.per_image, args.results, args.details)
    write_detection_outputs(evaluation, split, outputs)
    stats = evaluation.report.stats
    print(f"{args.model} on {split}: mAP {stats['mAP']:.4f}, mAP@.5 {stats['mAP50']:.4f}, AR@100 {stats['AR100']:.4f} "
          f"(AP: {scoring.ap}; {len(evaluation.categories['scored'])} categories scored)")


if __name__ == "__main__":
    run_stage(main)
