"""Detection stage infer: letterboxed layer + one detector → candidates layer (raw, before threshold and NMS).

Only the splits that are evaluated (evaluate.split, grid.split) go through the model; the model's labels are
checked against the dataset's categories first (detection/labels.py)."""
import argparse
from pathlib import Path

from evalstack.cache.shardstore import open_store
from evalstack.config import infer_batch_size, load_params, model_spec
from evalstack.core.failures import run_stage
from evalstack.detection.adapter import load_detector
from evalstack.detection.candidates import evaluated_splits, infer_candidates_layer
from evalstack.detection.labels import checked_label_map
from evalstack.detection.signatures import remember_signature
from evalstack.sources.coco import read_categories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="name under models:")
    parser.add_argument("--raw", type=Path, required=True, help="the raw layer (its categories)")
    parser.add_argument("--preprocessed", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    spec = model_spec(params, args.model)
    checked_label_map(spec, read_categories(args.raw), params["evaluate"].get("categories", "dataset"))
    adapter = load_detector(spec)
    batch_size = infer_batch_size(params)
    store = open_store(params, args.params.parent)  # not a dvc.yaml param: where results are kept does not change them
    remember_signature(store, spec, adapter.signature())  # evaluate then checks keys without loading the model
    build = infer_candidates_layer(args.preprocessed, args.out, adapter, evaluated_splits(params), batch_size, store)
    per_split = ", ".join(f"{split} {n}" for split, n in build.index.stats["forward_passes_by_split"].items())
    print(f"{build.summary()}; {build.counts['forward_passes']} forward passes (layer: {per_split})")


if __name__ == "__main__":
    run_stage(main)
