"""Stage robustness: one model's (perturbation type × severity) grid over its cached preprocessed layer."""
import argparse
import json
from pathlib import Path

from evalstack.config import infer_batch_size, load_params, model_spec
from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.failures import run_stage
from evalstack.evaluation.grid_scope import why_no_grid
from evalstack.models.adapters import end_process
from evalstack.preprocess.pipelines import pipeline_spec


def write_summary(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="name under models:")
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--preprocessed", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True, help="the model's clean predictions layer")
    parser.add_argument("--out", type=Path, required=True, help="directory of cell layers")
    parser.add_argument("--summary", type=Path, required=True, help="per-model metrics and counts (JSON)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    spec = model_spec(params, args.model)
    skipped = why_no_grid(spec.task, pipeline_spec(params, spec.pipeline).output_shape())
    if skipped:
        args.out.mkdir(parents=True, exist_ok=True)
        write_summary(args.summary, {"model": args.model, "skipped": skipped})
        print(f"{args.model}: no perturbation grid ({skipped})")
        return
    # imported once there is a grid: a model without one (every concentration model) skips ~0.25 s of them
    from evalstack.cache.executors import local_threads
    from evalstack.cache.shardstore import open_store
    from evalstack.core.layers import Layer
    from evalstack.evaluation.robustness import GridConfig, build_grid, grid_results
    from evalstack.evaluation.robustness_metrics import model_summary
    from evalstack.models.signatures import open_adapter

    config = GridConfig.from_params(params.get("robustness") or {})
    store = open_store(params, args.params.parent)
    adapter = open_adapter(spec, store)  # loaded at its first forward pass when the store remembers its signature
    batch_size = infer_batch_size(params)
    threads = local_threads(params)  # not a dvc.yaml param: the bytes do not depend on it
    build = build_grid(args.raw, args.preprocessed, args.predictions, args.out, adapter, config, store, batch_size,
                       threads)
    clean_accuracy, results = grid_results(build, args.raw, spec.labels)
    upstream = {
        "clean_predictions_read": len(build.split_rows),
        "upstream_clean_predictions": build.clean.index.n_items,
        "upstream_items_preprocessed": int(Layer.open(args.preprocessed).index.stats.get("items_preprocessed", 0)),
    }
    summary = model_summary(build, clean_accuracy, results, config, upstream)
    write_summary(args.summary, summary)
    runs = [cell.counts for cell in build.cells.values()]
    print(f"{args.model}: {len(runs)} cells, {sum(1 for c in runs if c['shards_computed'])} computed; "
          f"{sum(c['forward_passes'] for c in runs)} perturbed forward passes this run "
          f"(adapter counted {build.forward_passes}), 0 clean, 0 preprocessed; "
          f"{'model loaded' if adapter.loaded else 'model not loaded (every cell stored, its signature remembered)'}")


if __name__ == "__main__":
    run_stage(main)
    end_process()  # torch/TensorFlow teardown would add seconds to every run
