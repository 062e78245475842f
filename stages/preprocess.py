"""Stage preprocess: raw layer → preprocessed layer for one pipeline."""
import argparse
from pathlib import Path

from evalstack.cache.executors import open_executor
from evalstack.cache.shardstore import open_store
from evalstack.config import load_params, preprocess_compression
from evalstack.core.failures import run_stage
from evalstack.preprocess.pipelines import pipeline_spec, preprocess_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipeline", required=True, help="name under preprocess.pipelines")
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    pipeline = pipeline_spec(params, args.pipeline)
    compression = preprocess_compression(params)
    max_pixels = int(params["fetch"]["max_pixels"])
    store = open_store(params, args.params.parent)  # not a dvc.yaml param: where results are kept does not change them
    with open_executor(params, store=store) as executor:  # not a dvc.yaml param either: the executor does not change the bytes
        build = preprocess_layer(args.raw, args.out, pipeline, compression, max_pixels, store, args.pipeline, executor)
    print(build.summary())


if __name__ == "__main__":
    run_stage(main)
