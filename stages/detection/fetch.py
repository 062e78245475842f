"""Detection stage fetch: COCO annotations + images → raw layer (encoded images + ground-truth boxes)."""
import argparse
from pathlib import Path

from evalstack.config import load_params
from evalstack.core.failures import run_stage
from evalstack.sources.coco import CocoFetchConfig, CocoSplit, fetch_coco_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="raw layer directory")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    fetch = load_params(args.params)["fetch"]
    config = CocoFetchConfig(
        splits={name: CocoSplit(**entry) for name, entry in fetch["splits"].items()},
        shard_size=int(fetch["shard_size"]),
        max_pixels=int(fetch["max_pixels"]),
        max_bytes=int(fetch.get("max_bytes", CocoFetchConfig.max_bytes)),
        on_error=str(fetch.get("on_error", "fail")),
    )
    index = fetch_coco_layer(config, args.out)
    print(f"raw layer: {index.n_items} images, {index.stats['annotations']} boxes in {len(index.shards)} shards")


if __name__ == "__main__":
    run_stage(main)
