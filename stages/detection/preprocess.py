"""Detection stage preprocess: raw layer → letterboxed layer (tensors + placement per image)."""
import argparse
from pathlib import Path

from evalstack.config import load_params
from evalstack.letterbox import build_letterbox, letterbox_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipeline", required=True, help="name under preprocess.pipelines")
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    pipeline = build_letterbox(params["preprocess"]["pipelines"][args.pipeline])
    compression = params["preprocess"].get("compression", "lz4")
    index = letterbox_layer(args.raw, args.out, pipeline, compression, int(params["fetch"]["max_pixels"]))
    print(f"preprocessed {args.pipeline}: {index.n_items} images, key {index.key.hex[:12]}")


if __name__ == "__main__":
    main()
