"""Each test's wall time against its CPU time: where a test waits instead of working (bench/RESULTS.md, T1).

As a pytest plugin, it appends one JSON line per test to $TEST_CPU_LOG: wall seconds, the test process's own
user + system CPU, and its reaped children's (the `dvc` CLI and the stage processes under it). Processes a test
starts detached (DVC's queue workers, a Dask cluster until its teardown) are not counted.

    PYTHONPATH=tools TEST_CPU_LOG=/tmp/test_cpu.jsonl .venv/bin/python -m pytest -p test_cpu -n auto --dist loadfile
    python tools/test_cpu.py /tmp/test_cpu.jsonl          # the tests that wait most, and the totals
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

import pytest


def _cpu() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # noqa: ARG001 (pytest's hook signature)
    log = os.environ.get("TEST_CPU_LOG")
    started, (own, children) = time.perf_counter(), _cpu()
    yield
    if log:
        own_after, children_after = _cpu()
        record = {"id": item.nodeid, "wall": time.perf_counter() - started, "self": own_after - own,
                  "children": children_after - children}
        with open(log, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def summarise(path: str, top: int = 15) -> None:
    rows = [json.loads(line) for line in open(path)]
    for row in rows:
        row["cpu"] = row["self"] + row["children"]
    wall, cpu = sum(r["wall"] for r in rows), sum(r["cpu"] for r in rows)
    print(f"{len(rows)} tests: {wall:.0f} s of test time, {cpu:.0f} s of CPU, {wall - cpu:.0f} s waiting or uncounted")
    for row in sorted(rows, key=lambda r: r["cpu"] - r["wall"])[:top]:
        print(f"{row['wall']:7.1f} s wall {row['cpu']:7.1f} s CPU  {row['id'][:110]}")


if __name__ == "__main__":
    summarise(sys.argv[1])
