"""Listing a registry that grew by 1 %: the whole file parsed (as fetch did before) vs its appended tail.

    python bench/registry_listing.py [--rows 200000]

Both sides list the same rows (asserted) through `iter_items`, with the location check every row
gets; the tail side reads the kept parse back from the fetch history. Also timed alone: the
location check, the part that still runs on every row read back.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evalstack.sources.catalog import SourceConfig, check_row_location, iter_items, local_roots  # noqa: E402
from evalstack.sources.registry import REGISTRY_COLUMNS, to_url  # noqa: E402
from evalstack.sources.registry_prefix import ParseCounts  # noqa: E402
from evalstack.sources.transport import Transport, TransportConfig  # noqa: E402


def rows(start: int, stop: int) -> list[list]:
    return [[i, i // 4, f"drug{i % 23}", 50 * (i % 5), "Galaxy S9", f"images/{i}.png",
             hashlib.md5(str(i).encode()).hexdigest(), f"{i}.png"] for i in range(start, stop)]


def timed_listing(registry: Path, parses: Path | None) -> tuple[float, list, ParseCounts]:
    counts = ParseCounts()
    started = time.perf_counter()
    with Transport(TransportConfig()) as transport:
        listed = list(iter_items(SourceConfig(registries={"dev": str(registry)}), transport, parses, counts))
    return time.perf_counter() - started, listed, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    n = parser.parse_args().rows
    grown = n + n // 100
    with tempfile.TemporaryDirectory() as scratch:
        registry, parses = Path(scratch) / "registry/metadata_dev.csv", Path(scratch) / "parses"
        registry.parent.mkdir()
        with open(registry, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(REGISTRY_COLUMNS)
            writer.writerows(rows(1, n + 1))
        cold, _, _ = timed_listing(registry, parses)  # the first fetch: parses all and keeps the parse
        with open(registry, "a", newline="") as handle:
            csv.writer(handle).writerows(rows(n + 1, grown + 1))
        whole, expected, _ = timed_listing(registry, None)
        tail, listed, counts = timed_listing(registry, parses)
        assert listed == expected and counts.parsed == grown - n and counts.reused == n
        url = to_url(str(registry))
        roots = local_roots(url, ())
        started = time.perf_counter()
        for row in listed:
            check_row_location(row, url, False, roots, TransportConfig().schemes)
        check = time.perf_counter() - started
    print(f"registry of {n:,} rows, then +1 % ({grown - n:,} rows appended)")
    print(f"  first listing (parse all, keep the parse): {cold:.2f} s")
    print(f"  +1 %: whole file parsed (before):          {whole:.2f} s")
    print(f"  +1 %: tail parsed, {n:,} rows read back:  {tail:.2f} s   ({whole / tail:.1f}x faster)")
    print(f"  of which the location check of every row:  {check:.2f} s")


if __name__ == "__main__":
    main()
