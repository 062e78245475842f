"""Stage fetch: a source (registry CSVs, PAD API, folder) → raw layer (encoded images + metadata, verified)."""
import argparse
import sys
from pathlib import Path

from evalstack.cache.shardstore import open_store
from evalstack.cache.tracked import check_tracked
from evalstack.config import load_params
from evalstack.core.failures import run_stage
from evalstack.fetch.distributed import fetch_cluster
from evalstack.fetch.raw_layer import fetch_config, fetch_raw_layer
from evalstack.sources.registry import SourceError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="raw layer directory")
    parser.add_argument("--report", type=Path, help="JSON report: counts, every failed id with its cause")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    config = fetch_config(params, report=args.report)
    check_tracked(config.source.local_files())
    try:
        store = open_store(params, args.params.parent)
        with fetch_cluster(params, store) as cluster:  # None unless executor: dask, dask.address and store.url
            result = fetch_raw_layer(config, args.out, store, cluster)
    except SourceError as error:  # a bad source or item: the message names it; the previous layer is kept
        print(f"fetch: {error}", file=sys.stderr)
        return 1
    activity = ", ".join(f"{name} {value}" for name, value in result.report.activity.items())
    print(f"raw layer: {result.index.n_items} items in {len(result.index.shards)} shards ({activity})")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
