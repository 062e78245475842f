"""Plain fetch vs fetch on Dask workers (fetch/distributed.py), same source, same run.

    python bench/fetch_dask.py N [--delay 0.01] [--dask-workers 2] [--threads 8] [--shard-bytes 8000000]

N items of 64×64 PNG (bench/_items.py, kept in bench/out/items) are served by the loopback PAD
server in its own process, sleeping `--delay` s per request to mimic a remote server's latency.
The object store is moto's S3 server (its own process); the Dask scheduler and workers are the
`dask` CLIs in a scratch directory holding no copy of the project, started before the timed runs
(a team's cluster keeps running; the start-up is printed apart). Both fetches start from nothing;
the two raw layers are checked byte-identical before any time is printed. The machine is shared:
timings are noisy, the ratio within one run is what to quote.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO / "src"), str(REPO), str(BENCH)]

import _items  # noqa: E402
from fetch import server_process  # noqa: E402  (bench/fetch.py: the loopback PAD server in its own process)

from evalstack.cache.objectstore import ObjectStore, ObjectStoreConfig  # noqa: E402
from evalstack.cache.shardstore import ShardStore, StoreConfig  # noqa: E402
from evalstack.fetch.distributed import ClusterFetch  # noqa: E402
from evalstack.fetch.raw_layer import FetchConfig, fetch_raw_layer  # noqa: E402
from evalstack.sources.catalog import SourceConfig  # noqa: E402
from tests.servers import dask_processes, free_port, wait_for_port  # noqa: E402

KEY_ID, SECRET, BUCKET = "bench", "bench-secret", "evalstack"


@contextlib.contextmanager
def moto_process(workdir: Path):
    """moto's S3 server as its own process (in this one it would compete with fetch for the GIL)."""
    import boto3

    port = free_port()
    log = workdir / "moto.log"
    with log.open("w") as handle:
        process = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log)
        url = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                     aws_secret_access_key=SECRET).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        process.terminate()
        process.wait()


def layer_files(layer_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(layer_dir.iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", type=int)
    parser.add_argument("--delay", type=float, default=0.01, help="seconds the server sleeps per request")
    parser.add_argument("--dask-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="fetch.workers: downloads at once per process")
    parser.add_argument("--shard-bytes", type=int, default=8_000_000)
    parser.add_argument("--rows-per-task", type=int, default=64)
    args = parser.parse_args()

    root = BENCH / "out" / "items"
    registries = _items.write_items(root, args.items)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    environment |= {"PYTHONPATH": str(REPO / "src"), "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                    "AWS_DEFAULT_REGION": "us-east-1"}
    with tempfile.TemporaryDirectory(prefix="bench-fetch-dask-") as scratch, \
            server_process(root, args.delay) as server_url, moto_process(Path(scratch)) as s3_url:
        work = Path(scratch)
        source = SourceConfig(registries={split: server_url + path.name for split, path in registries.items()})
        config = FetchConfig(source, shard_bytes=args.shard_bytes, workers=args.threads)

        started = time.perf_counter()
        plain = fetch_raw_layer(config, work / "plain", ShardStore(StoreConfig(work / "plain-store", 1 << 40)))
        plain_seconds = time.perf_counter() - started

        started = time.perf_counter()
        with dask_processes(work / "dask", args.dask_workers, environment) as cluster:
            from distributed import Client

            with Client(cluster.address) as client:
                client.run(lambda: __import__("evalstack.fetch.distributed"))  # imports, as a running cluster has
                cluster_seconds = time.perf_counter() - started
                remote = ObjectStore(ObjectStoreConfig(f"s3://{BUCKET}/bench", endpointurl=s3_url, region="us-east-1",
                                                       credentials={"access_key_id": KEY_ID, "secret_access_key": SECRET}))
                store = ShardStore(StoreConfig(work / "dask-store", 1 << 40), remote)
                started = time.perf_counter()
                on_dask = fetch_raw_layer(config, work / "dask", store,
                                          ClusterFetch(remote, lambda: client, args.rows_per_task))
                dask_seconds = time.perf_counter() - started
        assert layer_files(work / "dask") == layer_files(work / "plain"), "the Dask fetch built another layer"
        assert plain.index.n_items == on_dask.index.n_items == args.items

    activity = on_dask.report.activity
    # RequestCounts.as_dict() deep-copies its lock (TypeError): its fields are read one by one
    counts = {name: getattr(remote.counters, name) for name in
              ("requests_get", "requests_put", "requests_head", "requests_list", "bytes_in", "bytes_out")}
    print(f"fetch of {args.items} items (64×64 PNG, server delay {args.delay * 1000:.0f} ms/request, "
          f"fetch.workers {args.threads}, shard_bytes {args.shard_bytes}); layers byte-identical")
    print(f"  plain (this process)            {plain_seconds:8.2f} s  {plain_seconds / args.items * 1e6:8.0f} µs/item")
    print(f"  dask ({args.dask_workers} workers, {args.rows_per_task} rows/task) {dask_seconds:8.2f} s  "
          f"{dask_seconds / args.items * 1e6:8.0f} µs/item  ratio dask/plain {dask_seconds / plain_seconds:.2f}")
    print(f"  cluster start-up (not in the dask time) {cluster_seconds:.1f} s")
    print(f"  dask path: {activity['worker_http_gets']} image GETs on workers, {activity['packs']} packs "
          f"({activity['pack_bytes'] / 1e6:.1f} MB); client object-store requests {counts}")


if __name__ == "__main__":
    main()
