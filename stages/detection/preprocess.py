"""Detection stage preprocess: raw layer → letterboxed layer (tensors + placement per image)."""
import argparse
from pathlib import Path

from evalstack.cache.shardstore import open_store
from evalstack.config import load_params, preprocess_compression
from evalstack.core.failures import run_stage
from evalstack.preprocess.letterbox import build_letterbox, letterbox_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipeline", required=True, help="name under preprocess.pipelines")
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    pipeline = build_letterbox(params["preprocess"]["pipelines"][args.pipeline])
    compression = preprocess_compression(params)
    store = open_store(params, args.params.parent)  # not a dvc.yaml param: where results are kept does not change them
    max_pixels = int(params["fetch"]["max_pixels"])
    build = letterbox_layer(args.raw, args.out, pipeline, compression, max_pixels, store, name=args.pipeline)
    print(build.summary())


if __name__ == "__main__":
    run_stage(main)
