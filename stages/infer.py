"""Stage infer: preprocessed layer + one model → predictions layer (+ the latency measured on the way)."""
import argparse
from pathlib import Path

from evalstack.cache.executors import open_executor
from evalstack.cache.shardstore import open_store
from evalstack.config import infer_batch_size, load_params, model_spec
from evalstack.core.failures import run_stage
from evalstack.models.adapters import end_process, load_adapter
from evalstack.models.inference import infer_layer
from evalstack.models.latency import ensure_timed, latency_record, write_latency
from evalstack.models.signatures import remember_signature


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="name under models:")
    parser.add_argument("--preprocessed", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--latency", type=Path, help="JSON file for the measured ms per item")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    adapter = load_adapter(model_spec(params, args.model))
    batch_size = infer_batch_size(params)
    store = open_store(params, args.params.parent)  # not a dvc.yaml param: where results are kept does not change them
    remember_signature(store, adapter)  # robustness then keys its cells without loading the model
    with open_executor(params, in_process=True, store=store) as executor:  # not a dvc.yaml param either: the executor does not change the bytes
        build = infer_layer(args.preprocessed, args.out, adapter, batch_size, store, executor)
    print(f"{build.summary()}; {build.counts['forward_passes']} forward passes")
    if args.latency:
        ensure_timed(adapter, args.preprocessed, batch_size)
        write_latency(args.latency, latency_record(adapter, batch_size))


if __name__ == "__main__":
    run_stage(main)
    end_process()  # torch/TensorFlow teardown would add seconds to every run
