"""Detection stage postprocess: candidates layer → detections layer (threshold, cap, NMS; no forward pass)."""
import argparse
from pathlib import Path

from evalstack.cache.shardstore import open_store
from evalstack.config import load_params, model_spec
from evalstack.core.failures import run_stage
from evalstack.detection.decoding import PostProcess
from evalstack.detection.postprocess import postprocess_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="name under models:")
    parser.add_argument("--candidates", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    post = PostProcess.from_options(model_spec(params, args.model).options)
    store = open_store(params, args.params.parent)
    build = postprocess_layer(args.candidates, args.out, post, store, label=f"model {args.model}: postprocess")
    print(f"{build.summary()}; 0 forward passes")


if __name__ == "__main__":
    run_stage(main)
