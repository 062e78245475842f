"""Detection stage fetch: a COCO JSON or YOLO dataset → raw layer (encoded images + ground-truth boxes)."""
import argparse
from pathlib import Path

from evalstack.cache.tracked import check_tracked
from evalstack.config import load_params
from evalstack.core.failures import run_stage
from evalstack.sources.detection_source import detection_source_files, fetch_detection_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="raw layer directory")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    fetch = load_params(args.params)["fetch"]
    check_tracked(detection_source_files(fetch))
    index = fetch_detection_layer(fetch, args.out)
    print(f"raw layer: {index.n_items} images, {index.stats['annotations']} boxes in {len(index.shards)} shards")


if __name__ == "__main__":
    run_stage(main)
