"""Issue 26 point 5: preprocess + infer of N small images on 2 Dask workers that share nothing but an
S3 bucket (moto on loopback), against the local executor, in one run.

    python bench/objectstore_dask.py [--items 20000] [--shard-mb 8]

* the images (64×64 PNG, bench/_items.py) and the model (a small trained CNN, torch.export) are kept in
  bench/out/items between runs; the raw layer is fetched once, untimed, and shared by both builds;
* local: each stage in this process (`executor: local`, the default), no store;
* object store: `dask scheduler` + 2 `dask worker` processes started with the CLIs in a temp directory
  that holds no copy of the project, PYTHONPATH = the library's src only, credentials in their
  environment; the client's store has a fresh local cache and an empty bucket (cold);
* asserted: both layers byte-identical (every shard and index.json), and no task names a path of the project;
* printed: wall time per stage and its ratio to local, requests and bytes per stage as the client
  counts them, as the workers count them, and as the S3 server counts them.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import _items  # noqa: E402
import cloudpickle  # noqa: E402
from _s3count import counting_s3, delta, describe  # noqa: E402

from evalstack.cache.executors import LocalExecutor, open_executor  # noqa: E402
from evalstack.cache.objectstore import ObjectStore, ObjectStoreConfig, RequestCounts  # noqa: E402
from evalstack.cache.shardstore import ShardStore, StoreConfig  # noqa: E402
from evalstack.config import ModelSpec  # noqa: E402
from evalstack.fetch.raw_layer import FetchConfig, fetch_raw_layer  # noqa: E402
from evalstack.models.adapters import load_adapter  # noqa: E402
from evalstack.models.inference import infer_layer  # noqa: E402
from evalstack.preprocess.pipelines import build_pipeline, preprocess_layer  # noqa: E402
from tests.servers import dask_processes  # noqa: E402

OUT = BENCH / "out" / "objectstore_dask"
ITEMS = BENCH / "out" / "items"
MODEL = "shapes"


@dataclass
class StageFigures:
    seconds: float
    client: dict[str, int]  # ObjectStore.counters of the client, for this stage
    workers: dict[str, int]  # the workers' ObjectStore.counters, summed
    server: tuple[dict[str, int], int]  # the S3 server's requests by kind, bytes received


def md5s(root: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.iterdir()) if p.is_file()}


def counts(counter: RequestCounts) -> dict[str, int]:
    return counter.as_dict()


def minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


def requests_text(c: dict[str, int]) -> str:
    total = c["requests_get"] + c["requests_put"] + c["requests_head"] + c["requests_list"]
    return (f"{total} requests (GET {c['requests_get']}, PUT {c['requests_put']}, HEAD {c['requests_head']}, "
            f"LIST {c['requests_list']}), {c['bytes_in'] / 1e6:.1f} MB in, {c['bytes_out'] / 1e6:.1f} MB out")


def model_spec(folder: Path) -> ModelSpec:
    path = ITEMS / f"{MODEL}.pt2"
    if not path.exists():
        _items.train_model(ITEMS, path)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, folder / path.name)
    return ModelSpec(name=MODEL, file=folder / path.name, adapter="torch", pipeline="small", labels=_items.CLASSES,
                     trust=True)  # bench/_items.py trained it: ours


def stages(root: Path, raw: Path, executor: Any, store: ShardStore | None, batch: int) -> dict[str, Callable[[], Any]]:
    pipeline = build_pipeline(dict(_items.PIPELINE))
    adapter = load_adapter(model_spec(root / "models"))
    return {
        "preprocess": lambda: preprocess_layer(raw, root / "pre", pipeline, "none", store=store, name="small",
                                               executor=executor),
        "infer": lambda: infer_layer(root / "pre", root / "pred", adapter, batch, store, executor),
    }


@contextmanager
def recorded_tasks(executor: Any) -> Iterator[list[bytes]]:
    """Every task submitted, pickled (the check that no project path travels)."""
    payloads: list[bytes] = []
    submit = executor.client.submit

    def recording(function, *args, **kwargs):
        payloads.append(cloudpickle.dumps((function, args)))
        return submit(function, *args, **kwargs)

    executor.client.submit = recording
    yield payloads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--shard-mb", type=float, default=8.0, help="fetch.shard_bytes in MB (tasks = raw shards)")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    started = time.monotonic()
    registries = _items.write_items(ITEMS, args.items)
    raw = OUT / "raw"
    fetch_raw_layer(FetchConfig({split: str(path) for split, path in registries.items()},
                                          shard_bytes=int(args.shard_mb * 1e6)), raw)
    n_shards = len(list(raw.glob("*.h5")))
    print(f"{args.items} items in {n_shards} raw shards ({sum(p.stat().st_size for p in raw.glob('*.h5')) / 1e6:.0f} MB), "
          f"images + fetch (untimed) {time.monotonic() - started:.0f} s")

    local: dict[str, float] = {}
    for name, build in stages(OUT / "local", raw, LocalExecutor(), None, args.batch).items():
        t0 = time.monotonic()
        build()
        local[name] = time.monotonic() - t0

    figures: dict[str, StageFigures] = {}
    workers_dir = Path(tempfile.mkdtemp(prefix="evalstack-workers-"))  # nothing of the project in it
    with counting_s3() as (s3, server):
        credentials = {"AWS_ACCESS_KEY_ID": s3.key_id, "AWS_SECRET_ACCESS_KEY": s3.secret, "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(credentials)  # the client's, from where boto looks
        environment = {**os.environ, "PYTHONPATH": str(BENCH.parent / "src"), **credentials}
        config = ObjectStoreConfig(f"s3://{s3.bucket}/store", endpointurl=s3.url)
        store = ShardStore(StoreConfig(OUT / "store" / "cache", 10**12), ObjectStore(config))
        with dask_processes(workers_dir, workers=2, environment=environment) as cluster:
            with open_executor({"executor": "dask", "dask": {"address": cluster.address}}, store=store) as executor:
                with recorded_tasks(executor) as payloads:
                    for name, build in stages(OUT / "store", raw, executor, store, args.batch).items():
                        client_before, workers_before = counts(store.remote.counters), counts(executor.worker_requests)
                        server_before = server.snapshot()
                        t0 = time.monotonic()
                        build()
                        seconds = time.monotonic() - t0
                        figures[name] = StageFigures(seconds, minus(counts(store.remote.counters), client_before),
                                                     minus(counts(executor.worker_requests), workers_before),
                                                     delta(server_before, server.snapshot()))
    shutil.rmtree(workers_dir, ignore_errors=True)

    for layer in ("pre", "pred"):
        expected, got = md5s(OUT / "local" / layer), md5s(OUT / "store" / layer)
        assert got == expected and len(expected) == n_shards + 1, f"{layer}: layers differ"
    project_paths = sum(str(OUT).encode() in p or str(ITEMS).encode() in p for p in payloads)
    assert project_paths == 0 and len(payloads) == 2 * n_shards, (project_paths, len(payloads))

    print(f"byte-identical layers (preprocessed, predictions: {n_shards} shards + index.json each); "
          f"{len(payloads)} tasks, none naming a project path")
    for name, figure in figures.items():
        print(f"{name}: local executor {local[name]:.1f} s; 2 workers through the object store {figure.seconds:.1f} s "
              f"({figure.seconds / local[name]:.2f}x local)")
        print(f"  client: {requests_text(figure.client)}")
        print(f"  workers: {requests_text(figure.workers)}")
        print(f"  S3 server: {describe(*figure.server)}")
    print(f"per item: {sum(f.seconds for f in figures.values()) / args.items * 1e3:.2f} ms through the store vs "
          f"{sum(local.values()) / args.items * 1e3:.2f} ms local (both stages)")


if __name__ == "__main__":
    main()
