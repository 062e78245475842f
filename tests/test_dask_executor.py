"""Worker processes and the Dask executor (on a real LocalCluster) compute the same layers as the
stage's own process, byte for byte."""
from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest

from evalstack.cache import executors
from evalstack.cache.executors import (
    DaskExecutor,
    ExecutorError,
    LocalExecutor,
    ProcessExecutor,
    executor_settings,
    open_executor,
)
from evalstack.core.layers import Layer
from evalstack.models.inference import infer_layer
from evalstack.preprocess.pipelines import preprocess_layer
from tests.layers import Project, numpy_model, store_at, tiny_pipeline


def md5s(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def build(project: Project, executor, store=None):
    pre = preprocess_layer(project.raw, project.pre, tiny_pipeline(), "lz4", store=store, name="tiny", executor=executor)
    model = numpy_model(project.root / "models")
    pred = infer_layer(project.pre, project.pred, model, batch_size=3, store=store, executor=executor)
    return pre, pred


def recorded_pools(monkeypatch) -> list:
    """Every ProcessPoolExecutor created from now on (the test's monkeypatch undoes the recording)."""
    from concurrent.futures import ProcessPoolExecutor

    pools: list[ProcessPoolExecutor] = []
    original = ProcessPoolExecutor.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        pools.append(self)

    monkeypatch.setattr(ProcessPoolExecutor, "__init__", recording)
    return pools


def handed_sizes(monkeypatch) -> list[int]:
    """The item counts of the shards handed to a process pool from now on, in the order they were handed.
    (Which spawned worker starts first is a race, so the order is read where the stage hands the jobs out.)"""
    from concurrent.futures import ProcessPoolExecutor

    handed: list[int] = []
    submit = ProcessPoolExecutor.submit

    def recording(self, fn, *args, **kwargs):
        handed.append(args[-1].upstream.n_items)  # _derive_pickled(work, job)
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", recording)
    return handed


def fetched_twice(tmp_path: Path, first: str, second: str) -> tuple[Project, Project]:
    """Two copies of one project with the same raw layer: 22 items in 9 shards (content-defined ends)."""
    one = Project(tmp_path / first)
    one.grow(22)
    one.fetch(None)
    two = Project(tmp_path / second)
    shutil.copytree(one.root, two.root)
    return one, two


@pytest.mark.slow
def test_dask_and_local_executors_write_identical_layers(tmp_path: Path, monkeypatch):
    local, remote = fetched_twice(tmp_path, "local", "dask")

    build(local, LocalExecutor())
    params = {"executor": "dask", "dask": {"address": "", "workers": 2}}
    # these tiny shards take milliseconds: make the LocalCluster worth starting, so the cluster computes them
    monkeypatch.setattr(executors, "LOCAL_CLUSTER_WORTH_SECONDS", 0.0)
    with open_executor(params) as executor:
        assert isinstance(executor, DaskExecutor)
        pre, pred = build(remote, executor)
        assert executor.started and executor.in_process == 2  # two shards here (the pace), then the cluster
        # a second build through a store: computed on the cluster, then every shard reused
        store = store_at(tmp_path / "store")
        shutil.rmtree(remote.pre), shutil.rmtree(remote.pred)
        first = build(remote, executor, store)
        again = build(remote, executor, store)

    assert pre.counts["shards_computed"] == 9 and pred.counts["forward_passes"] == 22
    assert first[1].counts["shards_computed"] == 9
    assert again[0].counts["shards_reused"] == 9 and again[1].counts["forward_passes"] == 0
    for layer in ("data/preprocessed/tiny", "data/predictions/m"):
        expected = md5s(local.root / layer)
        assert len(expected) == 10  # 9 shards + the index
        assert md5s(remote.root / layer) == expected


def test_local_worker_processes_write_the_same_preprocessed_layer(tmp_path: Path):
    alone, pooled = fetched_twice(tmp_path, "alone", "pooled")
    preprocess_layer(alone.raw, alone.pre, tiny_pipeline(), "none", name="tiny", executor=LocalExecutor())
    with open_executor({"executor": "local", "local": {"workers": 2}}) as executor:
        assert isinstance(executor, ProcessExecutor) and executor.workers == 2
        build = preprocess_layer(pooled.raw, pooled.pre, tiny_pipeline(), "none", name="tiny", executor=executor)
    assert build.counts["shards_computed"] == 9 and build.counts["items_preprocessed"] == 22
    assert md5s(pooled.pre) == md5s(alone.pre)
    with open_executor({"executor": "local", "local": {"workers": 2}}, in_process=True) as executor:
        assert isinstance(executor, LocalExecutor)  # infer: the model loads once, in the stage's process
    with pytest.raises(ExecutorError, match="local.workers must be at least 1"):
        with open_executor({"executor": "local", "local": {"workers": 0}}):
            pass


def test_executor_setting_is_checked():
    assert executor_settings({})[0] == "local"
    assert executor_settings({})[1]["workers"] == 1
    assert executor_settings({"executor": "dask", "dask": {"address": "tcp://h:8786"}})[1]["address"] == "tcp://h:8786"
    with pytest.raises(ExecutorError, match="executor 'spark' unknown"):
        executor_settings({"executor": "spark"})


def _fills_the_disk(shard, path, progress):
    from evalstack.core.atomic import DiskFullError

    raise DiskFullError(Path(path).with_name("00000.h5"), 1_200_000)


def test_a_disk_full_in_a_worker_process_reaches_the_stage_as_itself(tmp_path: Path):
    # Found at 8,001 cards: a worker's DiskFullError could not be unpickled in the stage (TypeError), so the stage
    # died with "BrokenProcessPool: A process in the process pool was terminated abruptly" instead of saying why.
    from evalstack.cache.incremental import DerivedLayerSpec, build_derived_layer
    from evalstack.core.atomic import DiskFullError
    from evalstack.core.keys import Key

    project = Project(tmp_path / "project")
    project.grow(22)
    project.fetch(None)
    spec = DerivedLayerSpec("preprocessed", Key({"test": "disk full"}), "test", {}, "items_preprocessed")
    with pytest.raises(DiskFullError, match=r"no space left on the disk holding .*: writing 00000.h5 needs 1.2 MB"):
        build_derived_layer(Layer.open(project.raw), project.pre, spec, _fills_the_disk, None,
                            ProcessExecutor(2, worth_seconds=0))


def test_errors_with_their_own_arguments_survive_pickling(tmp_path: Path):
    import pickle

    from evalstack.cache.objectstore import DamagedBlob
    from evalstack.cache.shardstore import StoreEntry
    from evalstack.core.atomic import DiskFullError

    full = pickle.loads(pickle.dumps(DiskFullError(tmp_path / "layer/00000.h5", 2_000_000)))
    assert isinstance(full, DiskFullError) and full.needed == 2_000_000 and "needs 2.0 MB" in str(full)
    entry = StoreEntry(**{name: None for name in StoreEntry.__dataclass_fields__})
    damaged = pickle.loads(pickle.dumps(DamagedBlob(entry, "s3://bucket/blob: bytes differ")))
    assert isinstance(damaged, DamagedBlob) and str(damaged) == "s3://bucket/blob: bytes differ"
    assert damaged.entry == entry


def test_workers_get_the_largest_shards_first_and_the_layer_is_the_one_in_job_order(tmp_path: Path, monkeypatch):
    # Raw shards are ragged; in job order the largest could start last while the other worker idles (P9's cause,
    # measured: the 2.4 s shard of the 400-card default started at 4.4 s). One worker thread makes the order seen.
    from distributed import Client, LocalCluster

    alone, clustered = fetched_twice(tmp_path, "alone", "clustered")
    preprocess_layer(alone.raw, alone.pre, tiny_pipeline(), "lz4", name="tiny", executor=LocalExecutor())
    log = tmp_path / "started.txt"  # the task travels pickled, so it writes down what it starts
    derive = executors.derive_shard

    def recording(compute, job, fmt, progress=None):
        with open(log, "a") as handle:
            handle.write(f"{job.upstream.n_items}\n")
        return derive(compute, job, fmt, progress)

    monkeypatch.setattr(executors, "derive_shard", recording)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        build = preprocess_layer(clustered.raw, clustered.pre, tiny_pipeline(), "lz4", name="tiny",
                                 executor=DaskExecutor(client))
    sizes = [shard.n_items for shard in Layer.open(clustered.raw).shards]
    assert len(set(sizes)) > 1 and sizes != sorted(sizes, reverse=True)  # ragged, and not already largest first
    assert [int(line) for line in log.read_text().split()] == sorted(sizes, reverse=True)
    assert build.counts["shards_computed"] == len(sizes)
    assert md5s(clustered.pre) == md5s(alone.pre)  # the layer lists its shards in job order, byte for byte


def _first_blocks_last_fails(first: str, last: str, folder: Path):
    """A compute whose first shard in job order holds its worker until `folder/release` appears (at most 30 s),
    having written its process id to `folder/held`, and whose last shard fails once the first is held."""
    def compute(shard, path, progress):
        import os
        import time

        import numpy as np

        from evalstack.cache.incremental import ShardContent

        deadline = time.monotonic() + 30
        if shard.name == first:
            (folder / "held").write_text(str(os.getpid()))
            while not (folder / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            (folder / "finished").write_text("")
        if shard.name == last:
            while not (folder / "held").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            raise ValueError(f"shard {last} cannot be computed")
        return ShardContent({"value": np.zeros(shard.n_items, np.float32)})

    return compute


def _fail_fast_project(tmp_path: Path):
    from evalstack.cache.incremental import DerivedLayerSpec
    from evalstack.core.keys import Key

    project = Project(tmp_path / "project")
    project.grow(22)
    project.fetch(None)
    shards = Layer.open(project.raw).shards
    spec = DerivedLayerSpec("preprocessed", Key({"test": "fail fast"}), "test", {}, "items_preprocessed")
    return project, spec, _first_blocks_last_fails(shards[0].name, shards[-1].name, tmp_path), shards[-1].name


def _gone(pid: int) -> bool:
    import os
    import time

    for _ in range(100):  # ended and reaped: at most 5 s
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_failed_shard_stops_the_layer_while_the_shards_before_it_still_run(tmp_path: Path):
    # Results come back in job order; the stage used to wait for every shard before a failed one (the largest
    # run first, the whole layer on a large one) before it said why the layer failed.
    from evalstack.cache.incremental import build_derived_layer

    project, spec, compute, last = _fail_fast_project(tmp_path)
    with pytest.raises(ValueError, match=f"shard {last} cannot be computed"):
        build_derived_layer(Layer.open(project.raw), project.pre, spec, compute, None, ProcessExecutor(2, worth_seconds=0))
    assert not (tmp_path / "finished").exists() and not project.pre.exists()  # heard of while the first was held
    assert _gone(int((tmp_path / "held").read_text()))  # the worker holding it was ended, not left to run on


def test_a_failed_shard_on_dask_stops_the_layer_while_the_shards_before_it_still_run(tmp_path: Path):
    from distributed import Client, LocalCluster

    from evalstack.cache.incremental import build_derived_layer

    project, spec, compute, last = _fail_fast_project(tmp_path)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        try:
            with pytest.raises(ValueError, match=f"shard {last} cannot be computed"):
                build_derived_layer(Layer.open(project.raw), project.pre, spec, compute, None, DaskExecutor(client))
            assert not (tmp_path / "finished").exists()  # heard of while the first shard was still held
        finally:
            (tmp_path / "release").write_text("")  # a thread cannot be ended: let it finish before the cluster


def test_a_completed_build_leaves_its_worker_processes_to_end_by_themselves(tmp_path: Path, monkeypatch):
    # Ending the workers is for a failed layer only: after a good one they shut down as usual (exit code 0).
    pools = recorded_pools(monkeypatch)
    one, two = fetched_twice(tmp_path, "one", "two")
    preprocess_layer(one.raw, one.pre, tiny_pipeline(), "lz4", name="tiny", executor=LocalExecutor())
    stopped: list[object] = []
    monkeypatch.setattr(executors, "_stop_workers", stopped.append)
    preprocess_layer(two.raw, two.pre, tiny_pipeline(), "lz4", name="tiny",
                     executor=ProcessExecutor(2, worth_seconds=0))
    assert md5s(two.pre) == md5s(one.pre) and len(pools) == 1 and stopped == []


def test_completions_raise_a_later_failure_at_once_but_leave_a_recoverable_one_to_its_caller():
    import threading
    from concurrent.futures import Future

    from evalstack.cache.executors import Completions

    first, later = Future(), Future()
    completions = Completions([first, later])
    later.set_exception(ValueError("later shard broken"))
    with pytest.raises(ValueError, match="later shard broken"):
        completions.wait_for(first)  # `first` never finishes: the failure is raised while waiting for it
    first, later = Future(), Future()
    completions = Completions([first, later])
    later.set_exception(KeyError("recoverable"))
    threading.Timer(0.2, first.set_result, ["done"]).start()
    completions.wait_for(first, recoverable=(KeyError,))  # waits for `first` itself
    assert first.result() == "done"


def test_the_process_pool_is_handed_the_largest_shards_first(tmp_path: Path, monkeypatch):
    handed = handed_sizes(monkeypatch)
    alone, pooled = fetched_twice(tmp_path, "alone", "pooled")
    preprocess_layer(alone.raw, alone.pre, tiny_pipeline(), "lz4", name="tiny", executor=LocalExecutor())
    preprocess_layer(pooled.raw, pooled.pre, tiny_pipeline(), "lz4", name="tiny",
                     executor=ProcessExecutor(2, worth_seconds=0))
    sizes = [shard.n_items for shard in Layer.open(pooled.raw).shards]
    assert sizes != sorted(sizes, reverse=True) and handed == sorted(sizes, reverse=True)
    assert md5s(pooled.pre) == md5s(alone.pre)


def test_the_process_pool_starts_only_when_the_first_shards_pace_says_it_pays(tmp_path: Path, monkeypatch):
    # Spawning two workers costs ~1 s of CPU; a rerun that computes a few small shards is done in the stage's
    # own process, with the same bytes. At a pace that makes the rest worth it, the pool takes the rest.
    pools = recorded_pools(monkeypatch)
    alone, small = fetched_twice(tmp_path, "alone", "small")
    shards = len(Layer.open(alone.raw).shards)
    preprocess_layer(alone.raw, alone.pre, tiny_pipeline(), "lz4", name="tiny", executor=LocalExecutor())
    here = ProcessExecutor(2)  # tiny shards: milliseconds, far below POOL_WORTH_SECONDS
    preprocess_layer(small.raw, small.pre, tiny_pipeline(), "lz4", name="tiny", executor=here)
    assert pools == [] and here.in_process == shards and md5s(small.pre) == md5s(alone.pre)
    shutil.rmtree(small.pre)
    handed = handed_sizes(monkeypatch)
    paced = ProcessExecutor(2, worth_seconds=1e-9)  # any pace is worth a pool: the smallest shard gave the pace
    preprocess_layer(small.raw, small.pre, tiny_pipeline(), "lz4", name="tiny", executor=paced)
    assert len(pools) == 1 and paced.in_process == 1 and md5s(small.pre) == md5s(alone.pre)
    sizes = sorted((shard.n_items for shard in Layer.open(small.raw).shards), reverse=True)
    assert handed == sizes[:-1]  # the smallest ran here, the others went to the pool largest first


_USERS_PIPELINE = """from evalstack.preprocess.pipelines import CropResizePipeline

REVISION = {revision}


class MyCrop(CropResizePipeline):
    kind = "my_crop"
"""


@pytest.mark.slow
def test_a_dask_worker_that_stayed_up_through_an_edit_refuses_to_compute_for_the_edited_code(tmp_path: Path,
                                                                                            monkeypatch):
    """A running cluster (`dask.address`) keeps the modules its workers imported. After an edit, the stage keys
    the shards with the edited code while such a worker would compute them with the old code, and the store would
    keep those bytes under the new key (reproduced by a helper with `dvc repro` and `dask worker`). Refused on the
    worker; once the workers restart, the layer is the one the stage's own process computes."""
    import importlib
    import os

    from distributed import Client, LocalCluster

    from evalstack.core.fingerprint import StaleCodeError

    users = tmp_path / "users"
    users.mkdir()
    module = users / "my_crop.py"
    module.write_text(_USERS_PIPELINE.format(revision=1))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(users), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(users))
    monkeypatch.delitem(sys.modules, "my_crop", raising=False)
    my_crop = importlib.import_module("my_crop")
    alone, clustered = fetched_twice(tmp_path, "alone", "clustered")

    def mine():
        return my_crop.MyCrop(crop=(0, 0, 40, 30), resize=8, resample="bilinear")

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        preprocess_layer(clustered.raw, clustered.pre, mine(), "lz4", name="mine", executor=DaskExecutor(client))
        module.write_text(_USERS_PIPELINE.format(revision=2))
        stat = module.stat()
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
        importlib.reload(my_crop)  # the stage: a fresh process, which reads the edited file
        with pytest.raises(StaleCodeError, match=r"my_crop\.py changed after this process loaded my_crop"):
            preprocess_layer(clustered.raw, clustered.pre, mine(), "lz4", name="mine", executor=DaskExecutor(client))
        client.restart()
        build = preprocess_layer(clustered.raw, clustered.pre, mine(), "lz4", name="mine",
                                 executor=DaskExecutor(client))
    assert build.counts["shards_computed"] == len(Layer.open(clustered.raw).shards)
    preprocess_layer(alone.raw, alone.pre, mine(), "lz4", name="mine", executor=LocalExecutor())
    assert md5s(clustered.pre) == md5s(alone.pre)


def test_stopped_workers_are_reaped_before_the_stop_returns():
    """A failed layer's pool is ended with its workers reaped: none is reported running (nor sent a SIGKILL
    after it was reaped) once the stop returns. Joining the workers beside the pool's own thread, which reaps
    them too, left one "alive" in about 1 stop in 4 here."""
    import multiprocessing
    import signal
    import time
    from concurrent.futures import ProcessPoolExecutor

    for _ in range(30):
        pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
        running = [pool.submit(time.sleep, 30) for _ in range(3)]
        processes = list(pool._processes.values())
        time.sleep(0.01)  # stopped while starting, as a pool stopped by its probe's damaged input
        executors._stop_workers(pool)
        assert set(multiprocessing.active_children()) & set(processes) == set()  # the file's clusters aside
        assert [process.exitcode for process in processes] == [-signal.SIGTERM] * 2
        assert all(future.cancelled() or future.exception(timeout=5) is not None for future in running)


def test_shards_under_way_in_threads_give_the_layer_one_at_a_time_gives_and_a_failure_stops_it(tmp_path: Path):
    # The robustness grid computes `local.workers` shards at once in threads (ThreadExecutor): the first shards
    # here finish last, and the layer must still list them in job order, byte for byte as one at a time does.
    import threading
    import time

    import numpy as np

    from evalstack.cache.incremental import DerivedLayerSpec, ShardContent, build_derived_layer
    from evalstack.cache.threads import ThreadExecutor
    from evalstack.core.keys import Key

    project = Project(tmp_path / "project")
    project.grow(22)
    project.fetch(None)
    raw = Layer.open(project.raw)
    order = {shard.name: n for n, shard in enumerate(raw.shards)}
    assert len(order) >= 3
    running, most, lock = [0], [0], threading.Lock()

    def compute(shard, path, progress):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05 * (len(order) - order[shard.name]))  # the first shard takes longest
        with lock:
            running[0] -= 1
        if shard.name == failing[0]:
            raise ValueError(f"shard {shard.name} cannot be computed")
        return ShardContent({"value": np.full(shard.n_items, order[shard.name], np.float32)})

    spec = DerivedLayerSpec("preprocessed", Key({"test": "threads"}), "test", {}, "items_preprocessed")
    failing = [""]
    build_derived_layer(raw, tmp_path / "one", spec, compute, None, LocalExecutor())
    assert most[0] == 1
    threaded = build_derived_layer(raw, tmp_path / "two", spec, compute, None, ThreadExecutor(2))
    assert most[0] == 2 and threaded.counts["shards_computed"] == len(order)
    assert md5s(tmp_path / "two") == md5s(tmp_path / "one")
    failing[0] = raw.shards[1].name
    with pytest.raises(ValueError, match=f"shard {failing[0]} cannot be computed"):
        build_derived_layer(raw, tmp_path / "three", spec, compute, None, ThreadExecutor(2))
    assert not (tmp_path / "three").exists()
