"""The pieces of the road to a cluster (docs/scaling.md) that can run on one machine:

* a dask.distributed scheduler and two workers started as separate processes with the `dask` CLIs
  (not a LocalCluster), reached through `dask.address`, compute the same layers as the local
  executor, byte for byte, and the work really ran in those worker processes;
* an S3 remote (moto on loopback): after the source grows, `dvc push` uploads only the shards that
  changed, one index and one directory manifest per layer, as the scaling page counts them.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import boto3
import psutil
import pytest

from evalstack.cache.executors import DaskExecutor, open_executor
from tests.e2e import REPO, make_project, run, set_param
from tests.layers import Project
from tests.servers import dask_processes, moto_s3
from tests.test_dask_executor import build, fetched_twice, md5s

pytestmark = pytest.mark.slow


def test_a_cluster_of_separate_processes_writes_the_layers_the_local_executor_writes(tmp_path: Path):
    local, remote = fetched_twice(tmp_path, "local", "cluster")
    build(local, None)  # the stage's own process (LocalExecutor)
    # The workers import the library and this test's model module from the paths the stage uses.
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    with dask_processes(tmp_path / "dask", workers=2, environment=environment) as cluster:
        with open_executor({"executor": "dask", "dask": {"address": cluster.address}}) as executor:
            assert isinstance(executor, DaskExecutor) and executor.started  # an address connects at once
            with contextlib.chdir(remote.root):  # relative paths, as a stage passes them; the workers run elsewhere
                pre, pred = build(Project(Path(".")), executor)
            pids = executor.client.run(os.getpid)
            loaded = executor.client.run(lambda dask_worker: len(getattr(dask_worker, "_evalstack_loaded", {})))
            # the workers are the processes the CLIs started (each a child of its `dask worker` nanny)
            assert len(pids) == 2 and {psutil.Process(pid).ppid() for pid in pids.values()} <= set(cluster.pids[1:])

    assert pre.counts["shards_computed"] == 9 and pred.counts["forward_passes"] == 22
    for layer in ("data/preprocessed/tiny", "data/predictions/m"):
        assert md5s(remote.root / layer) == md5s(local.root / layer)
    assert sorted(loaded.values()) == [1, 1]  # each worker loaded the model once and predicted there


def test_a_local_cluster_is_started_only_when_the_work_is_worth_it(tmp_path: Path):
    project = Project(tmp_path / "p")
    project.grow(22)
    project.fetch(None)  # 9 small shards: milliseconds of work in this process
    with open_executor({"executor": "dask", "dask": {"address": "", "workers": 2}}) as executor:
        pre, pred = build(project, executor)
        assert not executor.started and executor.in_process == 18  # both layers computed here, no LocalCluster
    assert pre.counts["shards_computed"] == 9 and pred.counts["forward_passes"] == 22


def s3_objects(client, bucket: str) -> dict[str, int]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


def test_growth_pushes_only_changed_shards_to_s3(tmp_path: Path):
    root = make_project(tmp_path / "project", {"synth": {"n_cards": 40}, "fetch": {"shard_bytes": 8 * 1_370_000}})
    run(root, "dvc", "repro", "fetch")
    with moto_s3() as s3:
        run(root, "dvc", "remote", "add", "-d", "s3", f"s3://{s3.bucket}/cache")
        for option, value in {"endpointurl": s3.url, "access_key_id": s3.key_id,
                              "secret_access_key": s3.secret}.items():
            run(root, "dvc", "remote", "modify", "--local", "s3", option, value)
        client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1",
                              aws_access_key_id=s3.key_id, aws_secret_access_key=s3.secret)
        run(root, "dvc", "push", "fetch")
        before = s3_objects(client, s3.bucket)
        shards_before = {p.name: _md5(p) for p in (root / "data/raw").glob("*.h5")}
        # one object per shard, plus index.json, the directory manifest and the fetch report
        assert len(before) == len(shards_before) + 3

        set_param(root, "synth.n_cards", 42)
        run(root, "dvc", "repro", "fetch")
        run(root, "dvc", "push", "fetch")
        after = s3_objects(client, s3.bucket)

    changed = {name for name, md5 in ((p.name, _md5(p)) for p in (root / "data/raw").glob("*.h5"))
               if shards_before.get(name) != md5}
    uploaded = {key: size for key, size in after.items() if key not in before}
    manifests = [key for key in uploaded if key.endswith(".dir")]
    assert 1 <= len(changed) <= 2 and len(manifests) == 1
    # the changed shards, the new index.json, the new fetch report and one manifest: nothing else moved
    assert len(uploaded) == len(changed) + 3
    changed_bytes = sum((root / "data/raw" / name).stat().st_size for name in changed)
    assert sum(uploaded.values()) < changed_bytes + 50_000


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()
