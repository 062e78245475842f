"""Dask workers that share nothing but the object store (issue 26, point 2).

A `dask scheduler` and two `dask worker` processes (the CLIs), started in directories that hold no
copy of the project and with a PYTHONPATH naming only the library, compute preprocess and infer
through a loopback S3 server (moto): tasks carry keys and the store's url, workers read inputs and
write outputs there, and the client assembles layers byte-identical to the local executor's.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import cloudpickle
import h5py
import numpy as np
import pytest

from evalstack.cache.executors import DaskExecutor, open_executor
from evalstack.cache.objectstore import ObjectStore, ObjectStoreConfig, ObjectStoreUnavailable
from evalstack.cache.shardstore import ShardStore, StoreConfig
from evalstack.cache.storejobs import FileBlob, StoreJob, StoreJobError, cached_blob, derive_via_store, worker_config
from evalstack.config import ModelSpec
from evalstack.core.keys import sha256_file
from evalstack.core.layers import Layer
from evalstack.models.adapters import load_adapter
from evalstack.models.adapters.base import ModelAdapter
from evalstack.models.inference import infer_layer
from evalstack.preprocess.pipelines import build_pipeline, preprocess_layer
from tests.e2e import REPO
from tests.layers import LABELS, Project, tiny_pipeline
from tests.servers import S3Endpoint, dask_processes, free_port, moto_s3
from tests.test_dask_executor import fetched_twice, md5s

pytestmark = pytest.mark.slow


@contextmanager
def s3_credentials(endpoint: S3Endpoint) -> Iterator[None]:
    """Credentials where boto looks for them (this process's environment), as a user's would be."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", endpoint.key_id)
        patch.setenv("AWS_SECRET_ACCESS_KEY", endpoint.secret)
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint, s3_credentials(endpoint):
        yield endpoint


@pytest.fixture(scope="module")
def cluster(s3: S3Endpoint, tmp_path_factory):
    """Workers that know only the library and their own credentials: cwd and local directories in an
    empty folder, PYTHONPATH = the library's src (not the repository, not the test project)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with dask_processes(tmp_path_factory.mktemp("workers"), workers=2, environment=environment) as processes:
        yield processes


def onnx_model(directory: Path) -> ModelAdapter:
    """A real model file a worker loads through a library adapter: logits = flatten(x) @ w, in ONNX."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    weights = (np.random.default_rng(0).normal(size=(8 * 8 * 3, len(LABELS))) / 255).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", len(LABELS)])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([-1, 8 * 8 * 3], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, directory / "m.onnx")
    return load_adapter(ModelSpec(name="m", file=directory / "m.onnx", adapter="onnx", pipeline="tiny", labels=LABELS))


def build(project: Project, executor, store=None):
    pre = preprocess_layer(project.raw, project.pre, tiny_pipeline(), "lz4", store=store, name="tiny", executor=executor)
    pred = infer_layer(project.pre, project.pred, onnx_model(project.root / "models"), batch_size=3, store=store,
                       executor=executor)
    return pre, pred


def remote_store(root: Path, s3: S3Endpoint, prefix: str, **options) -> ShardStore:
    config = ObjectStoreConfig(f"s3://{s3.bucket}/{prefix}", endpointurl=s3.url, retries=1, connect_timeout=1,
                               read_timeout=10, **options)
    return ShardStore(StoreConfig(root, 10**9), ObjectStore(config))


def recording_submits(executor: DaskExecutor) -> list[bytes]:
    """Every task this executor submits, pickled as Dask ships it (cloudpickle)."""
    payloads: list[bytes] = []
    submit = executor.client.submit

    def recorded(function, *args, **kwargs):
        payloads.append(cloudpickle.dumps((function, args)))
        return submit(function, *args, **kwargs)

    executor.client.submit = recorded
    return payloads


def test_workers_sharing_only_the_store_write_the_layers_the_local_executor_writes(
        tmp_path: Path, s3: S3Endpoint, cluster):
    local, remote = fetched_twice(tmp_path, "local", "remote")
    build(local, None)
    # the client's credentials as a DVC remote lends them (store.remote): they must not travel in any task
    store = remote_store(tmp_path / "cache", s3, "layers",
                         credentials={"access_key_id": s3.key_id, "secret_access_key": s3.secret})
    with open_executor({"executor": "dask", "dask": {"address": cluster.address}}, store=store) as executor:
        assert isinstance(executor, DaskExecutor) and executor.puts_outputs
        payloads = recording_submits(executor)
        pre, pred = build(remote, executor, store)
        worker_pids = set(executor.client.run(os.getpid).values())

    assert pre.counts["shards_computed"] == 9 and pred.counts["forward_passes"] == 22
    assert executor.in_process == 0  # every shard was a task
    for layer in ("data/preprocessed/tiny", "data/predictions/m"):
        expected = md5s(local.root / layer)
        assert len(expected) == 10  # 9 shards + the index
        assert md5s(remote.root / layer) == expected
    # What travelled: 18 tasks, none naming a path under this test's directory (both projects live there)
    assert len(payloads) == 18
    naming_a_path = [n for n, p in enumerate(payloads) if str(tmp_path).encode() in p or b"data/raw" in p]
    assert naming_a_path == []
    assert s3.secret.encode() not in b"".join(payloads)  # the worker's credentials are its own environment's
    assert os.getpid() not in worker_pids and len(worker_pids) == 2
    # the workers published every output (blob + record each); the client uploaded inputs and weights only
    assert executor.worker_requests.requests_put >= 2 * 18
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1")
    listed = client.list_objects_v2(Bucket=s3.bucket, Prefix="layers/shards/")
    assert listed["KeyCount"] == 18
    weights = remote.root / "models/m.onnx"
    blob = f"layers/blobs/{sha256_file(weights)[:2]}/{sha256_file(weights)}"
    assert client.head_object(Bucket=s3.bucket, Key=blob)["ContentLength"] == weights.stat().st_size

    # a second checkout with only the store in common: everything comes from it, nothing is computed
    again = Project(tmp_path / "again")
    again.root.mkdir()
    shutil.copytree(local.raw, again.raw)
    with open_executor({"executor": "dask", "dask": {"address": cluster.address}},
                      store=remote_store(tmp_path / "cache2", s3, "layers")) as executor:
        pre2, pred2 = build(again, executor, executor.store)
    assert pre2.counts["shards_reused"] == 9 and pred2.counts["forward_passes"] == 0
    assert md5s(again.pred) == md5s(local.pred)


def test_a_worker_that_cannot_reach_the_store_fails_naming_it_and_no_shard_is_written(
        tmp_path: Path, s3: S3Endpoint, cluster):
    project = Project(tmp_path / "p")
    project.grow(9)
    project.fetch(None)
    # the client reaches the bucket (moto) but the workers are told an endpoint where nothing listens
    reachable = remote_store(tmp_path / "cache", s3, "unreachable").remote
    dead = ObjectStoreConfig(reachable.config.url, endpointurl=f"http://127.0.0.1:{free_port()}", retries=0,
                             connect_timeout=1, read_timeout=1)
    store = ShardStore(StoreConfig(tmp_path / "cache", 10**9), ObjectStore(dead, fs=reachable.fs))
    with open_executor({"executor": "dask", "dask": {"address": cluster.address}}, store=store) as executor:
        with pytest.raises(ObjectStoreUnavailable, match=r"object store s3://evalstack/unreachable is unreachable"):
            preprocess_layer(project.raw, project.pre, tiny_pipeline(), "lz4", store=store, name="tiny",
                             executor=executor)
    assert not list(project.pre.glob("*.h5")) and not (project.pre / "index.json").exists()


def test_the_worker_side_checks_what_it_downloads(tmp_path: Path, s3: S3Endpoint):
    """In this process, the worker's half: a missing upstream blob is an error naming the store, and a
    cached model file damaged on the worker's disk is downloaded again, not loaded."""
    project = Project(tmp_path / "p")
    project.grow(3)
    project.fetch(None)
    shard = Layer.open(project.raw).shards[0]
    config = worker_config(remote_store(tmp_path / "cache", s3, "worker").remote.config)
    assert config.required and not config.credentials
    from evalstack.cache.executors import OutputFormat
    from evalstack.core.keys import Key

    fmt = OutputFormat("preprocessed", Key("preprocessed", {"x": 1}), "none")
    with pytest.raises(StoreJobError, match=r"s3://evalstack/worker: upstream shard .* is missing"):
        derive_via_store(lambda *a: None, StoreJob(shard, "out.h5", "ab" * 32), fmt, config, {})

    store = ObjectStore(config)
    weights = tmp_path / "w.npy"
    weights.write_bytes(b"weights1")
    blob = FileBlob(store.put_blob(weights), "w.npy")
    cached = cached_blob(store, blob, tmp_path / "blobs")
    assert cached.name == "w.npy" and cached.read_bytes() == b"weights1"
    cached.chmod(0o644)
    cached.write_bytes(b"damaged!")
    assert cached_blob(store, blob, tmp_path / "blobs").read_bytes() == b"weights1"
    with pytest.raises(StoreJobError, match="missing from the store"):
        cached_blob(store, FileBlob("0" * 64, "x.npy"), tmp_path / "blobs")


def test_dvc_repro_on_a_cluster_sharing_only_the_bucket(tmp_path: Path, s3: S3Endpoint, cluster):
    """The template end to end: `dvc repro` with `executor: dask` at the CLI cluster's address and `store.url`
    on the bucket; the preprocessed layer is the local executor's, and its shards were tasks on the cluster."""
    from distributed import Client

    from evalstack.core.layers import read_attrs
    from tests.e2e import make_project, run

    def keys_computed(dask_scheduler) -> list[str]:  # nested: it travels by value (the scheduler cannot import tests)
        # every task that reached memory, from the scheduler's own log (forgotten tasks leave `tasks`, not the log)
        return sorted({str(entry[0]) for entry in dask_scheduler.transition_log if entry[2] == "memory"})

    root = make_project(tmp_path / "project", {
        "executor": "dask", "dask": {"address": cluster.address},
        "store": {"url": f"s3://{s3.bucket}/e2e", "endpointurl": s3.url},
    })
    run(root, "dvc", "repro", "preprocess@thumb64")  # the stage's credentials: this process's environment
    layer = root / "data/preprocessed/thumb64"
    shards = sorted(layer.glob("*.h5"))
    addresses = {}
    for shard in shards:
        with h5py.File(shard) as handle:
            addresses[shard.name] = read_attrs(handle)["shard_key"]
    with Client(cluster.address) as client:
        computed = set(client.run_on_scheduler(keys_computed))
    # every shard of this layer was a task on the cluster (keys name the shard's address and file)
    assert len(shards) >= 3
    assert {name for name, address in addresses.items() if f"shard-{address[:16]}-{name}" in computed} == set(addresses)

    local = tmp_path / "local"
    pipeline = build_pipeline({"kind": "crop_resize", "crop": [71, 359, 707, 849], "resize": 64, "resample": "bilinear"})
    preprocess_layer(root / "data/raw", local, pipeline, "none", name="thumb64")
    assert md5s(layer) == md5s(local)
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1")
    for address in addresses.values():
        client.head_object(Bucket=s3.bucket, Key=f"e2e/shards/{address[:2]}/{address}.json")  # raises when absent



def test_a_damaged_input_blob_in_the_bucket_is_uploaded_again_and_the_shard_computed(
        tmp_path: Path, s3: S3Endpoint, cluster):
    """An input blob of the right size with other bytes (a damaged upload, a bad disk): the worker refuses it,
    the client uploads its checked file over it and the task runs again; the layer is the local executor's."""
    local, remote = fetched_twice(tmp_path, "local", "remote")
    preprocess_layer(local.raw, local.pre, tiny_pipeline(), "lz4", name="tiny")
    store = remote_store(tmp_path / "cache", s3, "damaged")
    first = Layer.open(remote.raw).shards[0]
    blob = store.remote.blob_name(first.sha256)
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1")
    client.put_object(Bucket=s3.bucket, Key=f"damaged/{blob}", Body=b"\0" * (remote.raw / first.name).stat().st_size)
    with open_executor({"executor": "dask", "dask": {"address": cluster.address}}, store=store) as executor:
        built = preprocess_layer(remote.raw, remote.pre, tiny_pipeline(), "lz4", store=store, name="tiny",
                                 executor=executor)
    assert built.counts["shards_computed"] == len(Layer.open(remote.raw).shards)
    assert md5s(remote.pre) == md5s(local.pre)
    repaired = client.get_object(Bucket=s3.bucket, Key=f"damaged/{blob}")["Body"].read()
    assert repaired == (remote.raw / first.name).read_bytes()


def test_workers_load_only_the_weights_the_key_names(tmp_path: Path, monkeypatch):
    """The compute infer sends to workers pins the weights' sha256 its key was made from: a model file replaced
    while the stage runs is refused where it is loaded, never run under the old key (and into a shared store)."""
    import evalstack.models.inference as inference
    from evalstack.config import ModelError

    project = Project(tmp_path / "p")
    project.grow(3)
    project.fetch(None)
    preprocess_layer(project.raw, project.pre, tiny_pipeline(), "lz4", name="tiny")
    adapter = onnx_model(project.root / "models")
    sent = {}
    monkeypatch.setattr(inference, "build_derived_layer", lambda *args, **kwargs: sent.setdefault("compute", args[3]))
    infer_layer(project.pre, project.pred, adapter, executor=DaskExecutor(connect=lambda: None))
    spec = sent["compute"].spec
    assert spec.sha256 == adapter.weights_sha256
    load_adapter(spec)  # the same bytes: loads
    spec.file.write_bytes(spec.file.read_bytes() + b"\0")  # replaced meanwhile
    with pytest.raises(ModelError, match="params.yaml expects"):
        load_adapter(spec)
