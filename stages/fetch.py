"""Stage fetch: registry CSVs → raw layer (encoded images + metadata, md5-verified)."""
import argparse
from pathlib import Path

from evalstack.config import load_params, open_store
from evalstack.fetch import FetchConfig, fetch_raw_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="raw layer directory")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    fetch = params["fetch"]
    config = FetchConfig(
        registries=fetch["registries"],
        shard_size=int(fetch["shard_size"]),
        max_pixels=int(fetch["max_pixels"]),
    )
    index = fetch_raw_layer(config, args.out, open_store(params, args.params.parent))
    print(f"raw layer: {index.n_items} items in {len(index.shards)} shards")


if __name__ == "__main__":
    main()
