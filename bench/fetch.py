"""Fetch throughput vs. a plain sequential requests loop, against the same loopback PAD server.

    python bench/fetch.py [--cards 120] [--delay 0.02] [--workers 8]

The server (tests/loopback.py) runs in its own process (so it does not compete for
the client's GIL), serves the embedded dataset and sleeps `--delay` seconds per
request to mimic a remote server's latency. The baseline is what a user
would write: one requests.Session, GET every image listed in the registry CSVs, check
its md5, write it to a file. evalstack's fetch does the same plus a full decode check
per image (pixel cap, truncation) and writes the sharded raw layer. Both are timed in
this one run; the ratio is what to quote. The machine is shared: timings are noisy.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from evalstack.cache.shardstore import ShardStore, StoreConfig  # noqa: E402
from evalstack.demo.cards import write_dataset  # noqa: E402
from evalstack.fetch.raw_layer import FetchConfig, fetch_raw_layer  # noqa: E402
from evalstack.sources.catalog import SourceConfig  # noqa: E402
from evalstack.sources.images import check_image  # noqa: E402
from tests.loopback import PadServer  # noqa: E402


def _serve(root: Path, delay: float, urls) -> None:
    with PadServer(root, delay=delay) as server:
        urls.put(server.url)
        while True:
            time.sleep(3600)


@contextlib.contextmanager
def server_process(root: Path, delay: float):
    urls = multiprocessing.Queue()
    process = multiprocessing.Process(target=_serve, args=(root, delay, urls), daemon=True)
    process.start()
    try:
        yield urls.get(timeout=60)
    finally:
        process.terminate()
        process.join()


def baseline(server_url: str, out: Path, decode_check: bool = False) -> int:
    """The honest sequential loop: Session, GET, md5 check, write a file (optionally fetch's decode check too)."""
    out.mkdir(parents=True)
    session = requests.Session()
    total = 0
    for split in ("dev", "test"):
        text = session.get(f"{server_url}metadata_{split}.csv", timeout=30).text
        for row in csv.DictReader(io.StringIO(text)):
            response = session.get(server_url + row["url"], timeout=30)
            response.raise_for_status()
            if hashlib.md5(response.content).hexdigest() != row["hashlib_md5"]:
                raise RuntimeError(f"md5 mismatch for {row['id']}")
            if decode_check:
                check_image(response.content, 1 << 26, row["id"])
            (out / row["image_name"]).write_bytes(response.content)
            total += len(response.content)
    session.close()
    return total


def decode_costs(images: list[Path]) -> tuple[float, float]:
    """ms per card for `verify()` only and for the full check fetch runs (verify + decode)."""
    data = [path.read_bytes() for path in images]
    start = time.perf_counter()
    for blob in data:
        with Image.open(io.BytesIO(blob)) as image:
            image.verify()
    verify = time.perf_counter() - start
    start = time.perf_counter()
    for blob in data:
        check_image(blob, 1 << 26, "bench")
    full = time.perf_counter() - start
    return 1000 * verify / len(data), 1000 * full / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cards", type=int, default=120)
    parser.add_argument("--delay", type=float, default=0.02, help="server sleep per request, seconds")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    source = REPO / "bench/out/fetch_source"
    write_dataset(source, n_cards=args.cards, seed=0)
    with tempfile.TemporaryDirectory() as tmp, server_process(source, args.delay) as url:
        work = Path(tmp)
        start = time.perf_counter()
        n_bytes = baseline(url, work / "baseline")
        t_base = time.perf_counter() - start
        start = time.perf_counter()
        baseline(url, work / "baseline_checked", decode_check=True)
        t_checked = time.perf_counter() - start

        registries = {split: f"{url}metadata_{split}.csv" for split in ("dev", "test")}
        store = ShardStore(StoreConfig(work / "store", max_bytes=1 << 40))
        config = FetchConfig(SourceConfig(registries=registries), shard_bytes=48_000_000,
                             workers=args.workers)
        start = time.perf_counter()
        result = fetch_raw_layer(config, work / "raw", store)
        t_fetch = time.perf_counter() - start
        shutil.rmtree(work / "raw")
        start = time.perf_counter()
        again = fetch_raw_layer(config, work / "raw", store)  # nothing new: rebuilt from the fetch history
        t_again = time.perf_counter() - start
        assert result.index.n_items == again.index.n_items == args.cards
        verify_ms, full_ms = decode_costs(sorted((source / "images").glob("*.png")))

    mb = n_bytes / 1e6
    print(f"{args.cards} cards, {mb:.0f} MB, loopback server with {args.delay * 1000:.0f} ms per request")
    print(f"  sequential requests loop (md5, files):   {t_base:6.2f} s  {args.cards / t_base:6.1f} cards/s  {mb / t_base:6.1f} MB/s")
    print(f"  evalstack fetch ({args.workers} workers, decode check): {t_fetch:6.2f} s  {args.cards / t_fetch:6.1f} cards/s  "
          f"{mb / t_fetch:6.1f} MB/s")
    print(f"  sequential loop + the same decode check:  {t_checked:6.2f} s  {args.cards / t_checked:6.1f} cards/s")
    print(f"  ratio vs plain loop: {t_base / t_fetch:.2f}x; vs loop doing the same checks: {t_checked / t_fetch:.2f}x")
    print(f"  re-fetch with nothing new (no image GET): {t_again:.2f} s")
    print(f"  decode check per card: verify() {verify_ms:.1f} ms, full decode (what fetch runs) {full_ms:.1f} ms")


if __name__ == "__main__":
    main()
