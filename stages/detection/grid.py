"""Detection stage grid: original images corrupted (COCO-C) → one candidates layer per (type, severity).

The clean candidates are read from infer's layer, never recomputed; only new cells compute."""
import argparse
from pathlib import Path

from evalstack.cache.shardstore import open_store
from evalstack.config import infer_batch_size, load_params, model_spec
from evalstack.core.failures import run_stage
from evalstack.detection.adapter import load_detector
from evalstack.detection.grid import GridConfig, build_grid
from evalstack.detection.labels import checked_label_map
from evalstack.preprocess.letterbox import build_letterbox
from evalstack.sources.coco import read_categories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="name under models:")
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--preprocessed", type=Path, required=True)
    parser.add_argument("--candidates", type=Path, required=True, help="the clean candidates (infer's layer)")
    parser.add_argument("--out", type=Path, required=True, help="directory of cell layers")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    spec = model_spec(params, args.model)
    checked_label_map(spec, read_categories(args.raw), params["evaluate"].get("categories", "dataset"))
    adapter = load_detector(spec)
    pipeline = build_letterbox(params["preprocess"]["pipelines"][adapter.spec.pipeline])
    config = GridConfig.from_params(params["grid"])
    store = open_store(params, args.params.parent)
    build = build_grid(args.raw, args.preprocessed, args.candidates, args.out, adapter, pipeline, config, store,
                       infer_batch_size(params), int(params["fetch"]["max_pixels"]))
    for name, cell in build.cells.items():
        print(f"  {name}: {cell.summary()}")
    computed = sum(1 for cell in build.cells.values() if cell.counts["shards_computed"])
    print(f"grid {args.model}: {len(build.cells)} cells ({computed} with shards computed); clean forward passes "
          f"{build.clean_forward_passes} (by infer, once), perturbed forward passes this run {build.forward_passes}")


if __name__ == "__main__":
    run_stage(main)
