"""P9 taken apart: preprocess of a raw layer on a LocalCluster of one worker, then of two, each task's
start and length from Dask's task stream, and where each worker's last task ended.

    python bench/p9_tasks.py --raw data/raw [--repeats 3]

`--raw` is a fetched raw layer: the default project's after `make repro` (400 cards) is what `make bench`
measures P9 on. The speed-up is P9's figure (the same call as bench/_figures.py's p9_dask); the task lines
show what stands between it and two: a worker idle while the other finishes, or tasks slower side by side.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def one_run(raw: Path, out: Path, workers: int) -> tuple[float, list[tuple[float, float, str]]]:
    from distributed import Client, LocalCluster, get_task_stream

    from evalstack.cache.executors import DaskExecutor
    from evalstack.preprocess.pipelines import CropResizePipeline, preprocess_layer

    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None, processes=True) as cluster, \
            Client(cluster) as client:
        began, started = time.time(), time.monotonic()  # cluster start-up is not part of the figure
        with get_task_stream(client=client) as stream:
            preprocess_layer(raw, out, CropResizePipeline(), "lz4", executor=DaskExecutor(client))
        seconds = time.monotonic() - started
    tasks = sorted((part["start"] - began, part["stop"] - part["start"], task["worker"])
                   for task in stream.data for part in task["startstops"] if part["action"] == "compute")
    return seconds, tasks


def describe(workers: int, seconds: float, tasks: list[tuple[float, float, str]]) -> str:
    ends: dict[str, float] = {}
    for start, length, worker in tasks:
        ends[worker] = max(ends.get(worker, 0.0), start + length)
    busy = sum(length for _, length, _ in tasks)
    lines = [f"{workers} worker(s): {seconds:.2f} s; {len(tasks)} tasks, {busy:.2f} s of task time; "
             f"each worker's last task ended at {', '.join(f'{end:.2f}' for end in sorted(ends.values()))} s"]
    names = {worker: f"w{i}" for i, worker in enumerate(sorted(ends))}
    lines += [f"    {start:6.2f} s  {length:5.2f} s  {names[worker]}" for start, length, worker in tasks]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, required=True, help="a raw layer (data/raw)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p9_") as scratch:
        for repeat in range(args.repeats):
            seconds = {}
            for workers in (1, 2):
                out = Path(scratch) / f"w{workers}"
                seconds[workers], tasks = one_run(args.raw.resolve(), out, workers)
                shutil.rmtree(out)
                print(describe(workers, seconds[workers], tasks), flush=True)
            print(f"run {repeat + 1}: speed-up (P9) {seconds[1] / seconds[2]:.2f}", flush=True)


if __name__ == "__main__":
    main()
