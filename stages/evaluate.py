"""Stage evaluate: predictions of one model on one split → DVC metrics and plots."""
import argparse
from pathlib import Path

from evalstack.config import load_params, model_spec
from evalstack.core.failures import run_stage
from evalstack.core.layers import Layer
from evalstack.evaluation.classification import EvaluationOutputs, evaluate_classifier, write_outputs
from evalstack.evaluation.concentration import evaluate_concentration, write_concentration_outputs
from evalstack.models.predictions import expected_model_signature
from evalstack.preprocess.pipelines import pipeline_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="name under models:")
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True, help="CSV of (actual, predicted) per item")
    parser.add_argument("--per-class", type=Path, required=True)
    parser.add_argument("--details", type=Path, help="JSON of every summary figure (--metrics then holds the headline)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    spec = model_spec(params, args.model)
    # Checked against the weights file and params now, so predictions from another model file are refused;
    # no framework is imported (TensorFlow alone takes seconds per stage).
    signature = expected_model_signature(Layer.open(args.predictions), spec)
    pipeline_key = pipeline_spec(params, spec.pipeline).cache_key()
    split = params["evaluate"]["split"]
    outputs = EvaluationOutputs(args.metrics, args.pairs, args.per_class, args.details, args.model, spec.task)
    if spec.task == "concentration":
        report, pairs, passes = evaluate_concentration(args.raw, args.predictions, spec, signature, pipeline_key, split)
        write_concentration_outputs(report, pairs, passes, outputs)
        print(f"{args.model} on {split}: {report.summary()}")
        return
    report, pairs, passes = evaluate_classifier(args.raw, args.predictions, spec, signature, pipeline_key, split)
    write_outputs(report, pairs, passes, outputs)
    print(f"{args.model} on {split}: accuracy {report.accuracy:.4f}, macro F1 {report.macro_f1:.4f}")


if __name__ == "__main__":
    run_stage(main)
