"""Where derived shards are computed: on this machine (`local`, in the stage's process or in
`local.workers` processes) or on dask.distributed (`dask`).

Each shard is one task, a pure function of (upstream shard path, stage spec) that
writes its output shard and returns its ShardInfo. Both executors run the same
`derive_shard`, so their layers are byte-identical. Workers see the same paths as
the stage (one machine, or a shared filesystem), except with `executor: dask` and an
object-store `store.url`: then tasks carry keys and the store's url, and workers share
nothing but the store (`cache/storejobs.py`). Which executor ran a build is left out of
every key: it does not change results.
"""
from __future__ import annotations

import contextlib
import ipaddress
import multiprocessing
import queue
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol
from urllib.parse import urlsplit

from evalstack.cache.objectstore import ObjectStoreUnavailable, RequestCounts
from evalstack.cache.shardstore import SHARD_KEY_ATTR, ShardStore
from evalstack.cache.storejobs import (
    StoreJob,
    UpstreamUnreadable,
    derive_via_store,
    key_json,
    output_entry,
    place_output,
    store_unreachable,
    upload_files,
    worker_config,
)
from evalstack.core.fingerprint import check_code_runs
from evalstack.core.keys import Key
from evalstack.core.layers import ShardInfo, write_layer_shard

EXECUTORS = ("local", "dask")


class ExecutorError(ValueError):
    """The executor is configured wrongly."""


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass


@dataclass(frozen=True)
class ShardJob:
    """One derived shard to compute: its upstream shard and where its output goes."""

    upstream: ShardInfo
    upstream_path: Path
    out_path: Path
    address: str  # derivation key hex, recorded in the shard so a store can be seeded from it


@dataclass(frozen=True)
class OutputFormat:
    kind: str
    key: Key
    compression: str


def derive_shard(compute: Callable, job: ShardJob, fmt: OutputFormat, progress: Progress | None = None) -> ShardInfo:
    """Compute one shard with `compute(shard, path, progress) -> ShardContent` and write it. Wherever this runs (a
    worker that stayed up since another run too), the code the key names must be the code that runs here."""
    code = key_code(fmt.key.parts)
    check_code_runs(code)
    content = compute(job.upstream, job.upstream_path, progress or _NoProgress())
    check_code_runs(code)  # notes what the computation imported
    return write_layer_shard(
        job.out_path, fmt.kind, fmt.key, fmt.compression, content.columns,
        attrs={**content.attrs, SHARD_KEY_ATTR: job.address},
        upstream=job.upstream.sha256, checksum_of=content.checksum_of, flat=content.flat or None,
    )


def key_code(parts: Mapping[str, Any]) -> dict[str, str]:
    """The `code` part of a layer's key: {module: digest} of what computes its shards (an upstream key's code,
    nested in its parts, ran upstream, not here)."""
    code = parts.get("code")
    return dict(code) if isinstance(code, dict) and all(isinstance(v, str) for v in code.values()) else {}


class LocalExecutor:
    """One shard after the other in this process; only one shard's data is in memory at a time."""

    def run(self, compute: Callable, jobs: list[ShardJob], fmt: OutputFormat, progress: Progress) -> Iterator[ShardInfo]:
        for job in jobs:
            yield derive_shard(compute, job, fmt, progress)


# What starting the process pool costs: each spawned worker imports numpy, Pillow, h5py and the stage's
# code (~0.45 s of CPU each on the 2-core bench machine), and the pool's first results arrive ~0.6 s later
# than this process would have given them. Work that takes less than this in the stage's own process is done
# there: it is the common rerun (a few shards after an edit or an append), and on a busy machine the workers'
# imports only compete with the work.
POOL_WORTH_SECONDS = 1.5


class ProcessExecutor:
    """Shards in `workers` processes on this machine, results in job order.

    Workers are spawned, not forked: a stage's threads (progress bars, frameworks) and open
    files stay behind. `compute` travels with cloudpickle, as on Dask, because it is usually a
    closure over the stage's pipeline or model spec. The pool is started only when it pays, as
    DaskExecutor starts its LocalCluster: the smallest shard is computed in this process first, and
    the rest there too when, at its pace, they would take less than `worth_seconds`
    (POOL_WORTH_SECONDS; 0 always starts the pool). The smallest, so that the pool's start (and the
    report of a shard that fails in it) waits as little as it can. The bytes are the same wherever a
    shard is computed.
    """

    def __init__(self, workers: int, worth_seconds: float = POOL_WORTH_SECONDS):
        if workers < 1:
            raise ExecutorError(f"local.workers must be at least 1, not {workers}")
        self.workers = workers
        self.worth_seconds = worth_seconds
        self.in_process = 0  # shards computed in the stage's own process (the pool was not worth starting)

    def run(self, compute: Callable, jobs: list[ShardJob], fmt: OutputFormat, progress: Progress) -> Iterator[ShardInfo]:
        if self.workers == 1 or len(jobs) <= 1:
            self.in_process += len(jobs)
            yield from LocalExecutor().run(compute, jobs, fmt, progress)
            return
        probe, probed = None, Future()  # the job computed here first, and its result (the pace)
        if self.worth_seconds > 0:
            probe = min(range(len(jobs)), key=lambda index: jobs[index].upstream.n_items)
            started = time.monotonic()
            probed.set_result(derive_shard(compute, jobs[probe], fmt))  # counted when its turn comes
            pace = (time.monotonic() - started) / max(jobs[probe].upstream.n_items, 1)
            rest = sum(job.upstream.n_items for index, job in enumerate(jobs) if index != probe)
            self.in_process += 1
            if len(jobs) <= 2 or pace * rest < self.worth_seconds:
                self.in_process += len(jobs) - 1
                for index, job in enumerate(jobs):
                    if index == probe:
                        progress.update(job.upstream.n_items)
                        yield probed.result()
                    else:
                        yield derive_shard(compute, job, fmt, progress)
                return
        import cloudpickle  # a dependency of dask, already installed

        context = multiprocessing.get_context("spawn")
        work = cloudpickle.dumps((compute, fmt))  # once; each job itself is plain data
        pooled = [job for index, job in enumerate(jobs) if index != probe]
        pool = ProcessPoolExecutor(min(self.workers, len(pooled)), mp_context=context)
        futures: list[Any] = []
        try:
            futures = _submitted_largest_first(pooled, lambda job, _priority: pool.submit(_derive_pickled, work, job))
            if probe is not None:
                futures.insert(probe, probed)
            yield from _in_job_order(jobs, futures, progress)
        except GeneratorExit:  # the caller took what it wanted (build_derived_layer takes one result per job)
            if futures and all(future.done() for future in futures):
                pool.shutdown(wait=True)
            else:
                _stop_workers(pool)
            raise
        except BaseException:  # a failed shard: the other shards are not wanted
            _stop_workers(pool)
            raise
        pool.shutdown(wait=True)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End a pool whose layer failed without waiting for the shards still running (`shutdown` waits for them,
    and so does the interpreter's exit): the stage reports its error now, not after the largest shards ran.
    Python 3.11 has no public way to end running workers (3.14 adds `terminate_workers`), hence `_processes`;
    what they were writing sits in the failed layer's staging folder, which the next build removes.

    The pool's own thread reaps the workers it sees die, so this one waits for that thread instead of joining
    the workers beside it: of two threads in `waitpid` on one worker, the loser gets ECHILD and `Process.join`
    returns with the worker still "alive" until the winner takes the GIL back to record its exit code; meanwhile
    a SIGKILL went to a pid that may be someone else's by then, and `active_children()` listed the worker (CI,
    stop 42; `tests/test_dask_executor.py::test_stopped_workers_are_reaped_before_the_stop_returns`)."""
    terminate = getattr(pool, "terminate_workers", None)
    if callable(terminate):
        terminate()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    if manager is not None:  # started by the first submit, with the first worker
        manager.join(timeout=5)
        if manager.is_alive():  # a worker ignored SIGTERM (or sits in uninterruptible I/O)
            for process in processes:
                process.kill()
            manager.join(timeout=5)


def _derive_pickled(work: bytes, job: ShardJob) -> ShardInfo:
    import cloudpickle

    compute, fmt = cloudpickle.loads(work)
    return derive_shard(compute, job, fmt)


def largest_first(jobs: list[ShardJob]) -> list[int]:
    """Job indices, the most items first (ties in job order): the order shards are handed to workers.

    Raw shards are ragged (content-defined ends: 9 to 89 cards in the 400-card default), so in job order the
    largest shard could start last on one worker while the others wait; most items first is the classic
    longest-processing-time schedule. Measured (P9, 400 cards, two Dask workers): in job order the 2.4 s
    shard started at 4.4 s and one worker idled its last 1.7 s. Results still come back in job order."""
    return sorted(range(len(jobs)), key=lambda index: (-jobs[index].upstream.n_items, index))


def _in_job_order(jobs: list[ShardJob], futures: list[Any], progress: Progress) -> Iterator[ShardInfo]:
    """Each future's ShardInfo in job order, the bar advancing per shard; a shard that fails stops the layer at
    once, whatever its place (`Completions`), and what has not run yet is cancelled. Futures of
    concurrent.futures or Dask."""
    completions = Completions(futures)
    try:
        for job, future in zip(jobs, futures):
            completions.wait_for(future)
            info = future.result()
            progress.update(job.upstream.n_items)
            yield info
    finally:
        for future in futures:
            future.cancel()


class Completions:
    """Futures (concurrent.futures or Dask) as they finish, so that a stage waiting for the next shard in job
    order hears at once of a failure further on: the largest shards run first and results come back in job
    order, so a failed small shard would otherwise be reported only once every shard before it in job order
    had run (minutes on a large layer, and its error is the one the user needs)."""

    def __init__(self, futures: list[Any]):
        self._finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for future in futures:
            self.watch(future)

    def watch(self, future: Any) -> None:
        future.add_done_callback(self._finished.put)  # called in another thread, or at once if done already

    def wait_for(self, future: Any, recoverable: tuple[type[BaseException], ...] = ()) -> None:
        """Until `future` is done; the error of any other future that fails meanwhile is raised (except a
        `recoverable` one, which its caller handles when it reaches that future)."""
        while not future.done():
            try:
                finished = self._finished.get(timeout=1.0)  # and look again: a callback is never relied on alone
            except queue.Empty:
                continue
            if finished is not future and finished.done() and not finished.cancelled():  # Dask: not a lost one
                error = finished.exception()
                if error is not None and not isinstance(error, recoverable):
                    finished.result()  # raises it, with the worker's traceback where Dask keeps one


# What starting a stage's own LocalCluster costs before it computes anything: two worker processes, their
# imports, the framework and the model loaded in each (measured on the 2-core bench machine: 2–8 s, more
# under load). Work that takes less in the stage's own process is done there.
LOCAL_CLUSTER_WORTH_SECONDS = 5.0


def _submitted_largest_first(jobs: list[ShardJob], submit: Callable[[ShardJob, int], Any]) -> list[Any]:
    """`submit(job, dask_priority)` for each job in largest_first order (a worker starts the first task that
    arrives, so the order of submission is what counts); the futures in job order."""
    priorities = _priorities(jobs)
    futures = {index: submit(jobs[index], priorities[index]) for index in largest_first(jobs)}
    return [futures[index] for index in range(len(jobs))]


def _priorities(jobs: list[ShardJob]) -> list[int]:
    """Dask's priority for each job (a higher one runs first): the largest_first order, 0 down to -(n - 1), so
    that on a shared cluster (`dask.address`) no job of ours runs ahead of another client's (priority 0) and a
    resubmitted task (priority 0) runs before the ones still waiting."""
    priorities = [0] * len(jobs)
    for rank, index in enumerate(largest_first(jobs)):
        priorities[index] = -rank
    return priorities


class DaskExecutor:
    """Shards as tasks on a dask.distributed cluster; results come back in job order.

    With `connect` instead of a client (a LocalCluster the stage starts itself), the cluster is
    started only when it pays: the first two shards are computed in this process, and the rest too when,
    at the second one's pace, they would take less than starting the cluster costs
    (LOCAL_CLUSTER_WORTH_SECONDS) — a rerun that adds a few items computes a shard or two. A cluster
    at `dask.address` is always used. The bytes are the same wherever a shard is computed.
    """

    def __init__(self, client: Any = None, connect: Callable[[], Any] | None = None, store: ShardStore | None = None):
        if client is None and connect is None:
            raise ExecutorError("DaskExecutor needs a client or a way to start one")
        self.client = client
        self._connect = connect
        self.in_process = 0  # shards computed in the stage's own process (the cluster was not worth starting)
        # With a store that has a remote, workers share only that: tasks carry keys, not paths
        # (cache/storejobs.py), and every shard this executor yields is in the store already.
        self.store = store if store is not None and store.remote is not None else None
        self.worker_requests = RequestCounts()  # what the workers asked of the store (the client's: store.remote.counters)

    @property
    def puts_outputs(self) -> bool:
        """Whether the shards it yields are in the store already (the caller does not put them again)."""
        return self.store is not None

    @property
    def started(self) -> bool:
        return self.client is not None

    def run(self, compute: Callable, jobs: list[ShardJob], fmt: OutputFormat, progress: Progress) -> Iterator[ShardInfo]:
        if self.client is None and jobs:
            # The first shard warms up (imports, a model's first call); the second one's pace is the estimate.
            per_item = 0.0
            for job in jobs[:2]:
                started = time.monotonic()
                yield self._here(compute, job, fmt, progress)
                self.in_process += 1
                per_item = (time.monotonic() - started) / max(job.upstream.n_items, 1)
            jobs = jobs[2:]
            if per_item * sum(job.upstream.n_items for job in jobs) < LOCAL_CLUSTER_WORTH_SECONDS:
                self.in_process += len(jobs)
                for job in jobs:
                    yield self._here(compute, job, fmt, progress)
                return
            self.client = self._connect()
        if self.store is not None:
            yield from self._run_via_store(compute, jobs, fmt, progress)
            return
        # pure=False: two jobs that look alike must still both run (they write different files).
        futures = _submitted_largest_first(jobs, lambda job, priority: self.client.submit(
            derive_shard, compute, job, fmt, pure=False, key=f"shard-{job.address[:16]}-{job.out_path.name}",
            priority=priority))
        yield from _in_job_order(jobs, futures, progress)

    def _here(self, compute: Callable, job: ShardJob, fmt: OutputFormat, progress: Progress) -> ShardInfo:
        """One shard in the stage's own process; put in the store when this executor promises that."""
        info = derive_shard(compute, job, fmt, progress)
        if self.store is not None:
            self.store.stamps.remember(job.out_path, info.sha256)
            self.store.put(output_entry(fmt.kind, key_json(fmt.key), job.address, job.upstream, info,
                                        job.out_path.stat().st_size), job.out_path)
        return info

    def _run_via_store(self, compute: Callable, jobs: list[ShardJob], fmt: OutputFormat,
                       progress: Progress) -> Iterator[ShardInfo]:
        """Workers read inputs from the store and write outputs there; the layer is assembled here."""
        assert self.store is not None and self.store.remote is not None
        remote = self.store.remote
        config = worker_config(remote.config)
        futures = []
        try:
            try:
                travelling, blobs = upload_files(remote, compute) if jobs else (compute, {})
                for job, priority in zip(jobs, _priorities(jobs)):  # each input is in the store before its task starts (a HEAD when it is already)
                    remote.put_blob(job.upstream_path, job.upstream.sha256)
                    task = StoreJob(job.upstream, job.out_path.name, job.address)
                    futures.append(self.client.submit(derive_via_store, travelling, task, fmt, config, blobs, pure=False,
                                                      key=f"shard-{job.address[:16]}-{job.out_path.name}",
                                                      priority=priority))
            except ObjectStoreUnavailable as error:
                raise store_unreachable(error) from error
            completions = Completions(futures)
            for job in jobs:
                try:
                    completions.wait_for(futures[0], recoverable=(UpstreamUnreadable,))
                    result = futures[0].result()
                except UpstreamUnreadable:
                    # a blob of the input's size was there but damaged (or was removed meanwhile): the client holds
                    # the checked file, so it uploads it over the blob and the task runs once more
                    remote.put_blob(job.upstream_path, job.upstream.sha256, repair=True)
                    futures[0] = self.client.submit(
                        derive_via_store, travelling, StoreJob(job.upstream, job.out_path.name, job.address), fmt,
                        config, blobs, pure=False, key=f"shard-{job.address[:16]}-{job.out_path.name}-again")
                    completions.watch(futures[0])
                    completions.wait_for(futures[0], recoverable=(UpstreamUnreadable,))
                    result = futures[0].result()
                futures.pop(0)  # done: only what is left is cancelled (the caller may not resume after the last one)
                for name, value in result.requests.items():
                    setattr(self.worker_requests, name, getattr(self.worker_requests, name) + value)
                info = place_output(self.store, job.address, job.out_path, result)
                progress.update(job.upstream.n_items)
                yield info
        finally:
            for future in futures:
                future.cancel()


Executor = LocalExecutor | ProcessExecutor | DaskExecutor


def executor_settings(params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(`executor`, its section: `local` or `dask`) from params.yaml, checked."""
    name = str(params.get("executor", "local") or "local")
    if name not in EXECUTORS:
        raise ExecutorError(f"executor {name!r} unknown; choose one of {', '.join(EXECUTORS)}")
    if name == "local":
        return name, _local_settings(params)
    return name, {"address": "", "workers": 2, **(params.get("dask") or {})}


def _local_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    return {"workers": 1, **(params.get("local") or {})}


def local_threads(params: Mapping[str, Any]) -> int:
    """How many threads a stage that always computes in its own process (the robustness grid, which shares
    its loaded model between them) may use: `local.workers`, whichever executor preprocess and infer use
    (the params schema holds it at 1 or more)."""
    return int(_local_settings(params)["workers"])


@contextlib.contextmanager
def open_executor(params: Mapping[str, Any], in_process: bool = False,
                  store: ShardStore | None = None) -> Iterator[Executor]:
    """The executor params.yaml asks for. `local` runs shards in `local.workers` processes, or in
    this one when `in_process` (infer: a model loads once per process and the frameworks use every
    core already). `dask.address` empty starts a LocalCluster for the stage when its work is worth it (see
    DaskExecutor); `tcp://host:8786` (or `tls://…`) connects to an existing scheduler. `store`, the stage's
    shard store: when it has an object store (`store.url`), Dask workers share only that (storejobs.py)."""
    name, settings = executor_settings(params)
    if name == "local":
        yield LocalExecutor() if in_process else ProcessExecutor(int(settings["workers"]))
        return
    dask = settings
    from distributed import Client, LocalCluster  # deferred: the local executor never pays for importing dask

    if dask["address"]:
        warning = plain_tcp_warning(str(dask["address"]))
        if warning:
            print(f"WARNING {warning}", file=sys.stderr)
        with Client(str(dask["address"])) as client:
            yield DaskExecutor(client, store=store)
        return
    with contextlib.ExitStack() as stack:
        def start_cluster() -> Any:
            cluster = stack.enter_context(LocalCluster(n_workers=int(dask["workers"]), threads_per_worker=1,
                                                       dashboard_address=None, processes=True))
            client = stack.enter_context(Client(cluster))
            from evalstack.cache.dask_plugins import ExitWhenClosed

            client.register_plugin(ExitWhenClosed())
            return client

        yield DaskExecutor(connect=start_cluster, store=store)


def plain_tcp_warning(address: str) -> str | None:
    """Why a `dask.address` is unsafe, or None. Tasks travel pickled (cloudpickle) and run on the
    workers, and results come back pickled: over plain `tcp://` to another machine anyone on the
    network path can read them, and whoever answers as the scheduler runs code in this process."""
    scheme, _, rest = address.partition("://") if "://" in address else ("tcp", "", address)
    if scheme != "tcp":
        return None  # tls:// (or inproc/ucx set up on purpose)
    host = urlsplit(f"//{rest}").hostname or ""
    if host == "localhost" or _is_loopback(host):
        return None
    return (f"dask.address {address} is plain TCP to another machine: tasks and results travel as pickles, "
            "so anyone on the network path can read them, and whoever poses as the scheduler can run code here. "
            "Use tls:// with certificates (README: \"Parallel shards\") or keep the scheduler on this machine.")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loaded_in_worker(factory: Callable[[Any], Any], spec: Any) -> Any:
    """`factory(spec)`, built once per worker process and kept there (a model must be loaded
    where it runs: interpreters do not pickle). Outside a worker it is built on each call."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return factory(spec)
    cache = worker.__dict__.setdefault("_evalstack_loaded", {})
    token = (factory, repr(spec))
    if token not in cache:
        cache[token] = factory(spec)
    return cache[token]


__all__ = ["DaskExecutor", "Executor", "ExecutorError", "LocalExecutor", "OutputFormat", "ProcessExecutor", "ShardJob", "derive_shard",
           "executor_settings", "loaded_in_worker", "open_executor", "plain_tcp_warning"]
