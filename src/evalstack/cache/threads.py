"""Shards computed a few at a time in threads of the stage's own process (the robustness grid).

Apart from `cache/executors.py` on purpose: that module is in the code part of every preprocess and infer key,
and this one only in the grid's, which is the only stage that uses it.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

from evalstack.cache.executors import (
    ExecutorError,
    LocalExecutor,
    OutputFormat,
    Progress,
    ShardJob,
    _in_job_order,
    derive_shard,
)
from evalstack.core.layers import ShardInfo


class ThreadExecutor:
    """Up to `ahead` shards computed at once in threads of this process, results in job order.

    For a computation that releases the GIL for most of its work and shares something loaded once (the
    robustness grid: its perturbations run in numpy, scipy.ndimage and OpenCV, and every shard uses the stage's
    one model). One shard at a time leaves a core idle while the shard is read, its model runs and its output is
    written; with the next shard already under way, that time overlaps with the next shard's perturbations. The
    computation itself must be safe to run twice at once (the grid serialises its model's calls). The bytes
    are the same as one shard at a time: each shard is computed alone, from its own input."""

    def __init__(self, ahead: int):
        if ahead < 1:
            raise ExecutorError(f"at least one shard at a time, not {ahead}")
        self.ahead = ahead

    def run(self, compute: Callable, jobs: list[ShardJob], fmt: OutputFormat, progress: Progress) -> Iterator[ShardInfo]:
        if self.ahead == 1 or len(jobs) <= 1:
            yield from LocalExecutor().run(compute, jobs, fmt, progress)
            return
        # Every job is queued at once (a finished one holds only its ShardInfo: the shard is on disk), `ahead`
        # threads take them in job order, and the process pool's `_in_job_order` hands them back: in order, a
        # failure heard at once wherever it is, what has not started cancelled.
        with ThreadPoolExecutor(self.ahead, thread_name_prefix="shard") as pool:
            futures = [pool.submit(derive_shard, compute, job, fmt) for job in jobs]
            yield from _in_job_order(jobs, futures, progress)
