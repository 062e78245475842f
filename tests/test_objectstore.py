"""The shard store on object storage: fsspec backends, the layout, checked reads, create-only records,
and a local store in front of a remote (moto's S3 server on loopback)."""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from evalstack.cache.objectstore import (
    DamagedBlob,
    ObjectStore,
    ObjectStoreConfig,
    ObjectStoreError,
    ObjectStoreUnavailable,
    objectstore_config,
)
from evalstack.cache.shardstore import ShardStore, ShardStoreError, StoreConfig, StoreEntry, open_store
from evalstack.cli.doctor import check_store
from tests.layers import Project, digests
from tests.servers import S3Endpoint, moto_s3


def shard_file(tmp_path: Path, name: str, content: bytes | None = None) -> tuple[StoreEntry, Path]:
    path = tmp_path / f"{name}.h5"
    path.write_bytes(content if content is not None else name.encode() * 300)
    entry = StoreEntry(address=hashlib.sha256(name.encode()).hexdigest(), sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                       size=path.stat().st_size, n_items=1, kind="preprocessed")
    return entry, path


@pytest.fixture
def s3(monkeypatch) -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        # credentials from where boto looks for them, as a user's would be
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", endpoint.key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", endpoint.secret)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield endpoint


def s3_store(s3: S3Endpoint, prefix: str = "team", **options) -> ObjectStore:
    return ObjectStore(ObjectStoreConfig(f"s3://{s3.bucket}/{prefix}", endpointurl=s3.url, retries=1,
                                         connect_timeout=1, read_timeout=2, **options))


@pytest.fixture(params=["file", "memory", "s3"])
def remote(request, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "file":
        yield ObjectStore(ObjectStoreConfig((tmp_path / "bucket").as_uri()))
    elif request.param == "memory":
        store = ObjectStore(ObjectStoreConfig(f"memory://evalstack-{tmp_path.name}"))
        yield store
        store.fs.rm(store.root, recursive=True)
    else:
        monkeypatch = request.getfixturevalue("monkeypatch")
        with moto_s3() as endpoint:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", endpoint.key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", endpoint.secret)
            yield s3_store(endpoint)


# -- the remote on its own -----------------------------------------------------------------
def test_a_shard_round_trips_by_key_with_its_bytes_checked(remote: ObjectStore, tmp_path: Path):
    entry, path = shard_file(tmp_path, "a")
    assert remote.get_record(entry.address) is None
    assert remote.put_shard(entry, path) == entry
    assert remote.fetch_shard(entry.address, tmp_path / "out.h5") == entry
    assert (tmp_path / "out.h5").read_bytes() == path.read_bytes()
    # content-addressed blob, record by key
    assert remote.has_blob(entry.sha256, entry.size)
    assert remote.fs.exists(f"{remote.root}/shards/{entry.address[:2]}/{entry.address}.json")
    assert remote.fs.exists(f"{remote.root}/blobs/{entry.sha256[:2]}/{entry.sha256}")
    assert remote.counters.requests_put >= 2 and remote.counters.bytes_out >= entry.size
    assert remote.counters.bytes_in >= entry.size


def test_metadata_and_blobs_by_content(remote: ObjectStore, tmp_path: Path):
    remote.put_meta("fetch/layers/abc.json", b'{"x": 1}')
    remote.put_meta("fetch/layers/def.json", b"{}")
    remote.put_meta("other/z", b"z")
    assert remote.get_meta("fetch/layers/abc.json") == b'{"x": 1}'
    assert remote.get_meta("fetch/layers/none.json") is None
    assert remote.list_meta("fetch/") == ["fetch/layers/abc.json", "fetch/layers/def.json"]
    assert remote.list_meta() == ["fetch/layers/abc.json", "fetch/layers/def.json", "other/z"]
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"w" * 5000)
    digest = remote.put_blob(weights)
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert remote.get_blob(digest, tmp_path / "w2") and (tmp_path / "w2").read_bytes() == weights.read_bytes()
    assert not remote.get_blob("0" * 64, tmp_path / "w3") and not (tmp_path / "w3").exists()


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../b", "a//b", ".hidden", ""])
def test_metadata_names_stay_under_the_prefix(name: str):
    store = ObjectStore(ObjectStoreConfig("memory://names"))
    with pytest.raises(ObjectStoreError, match="unsafe object-store name"):
        store.put_meta(name, b"x")


def test_a_url_carrying_credentials_is_refused_without_echoing_the_secret():
    with pytest.raises(ObjectStoreError, match="carries credentials") as caught:
        ObjectStoreConfig("s3://AKIAXXX:s3cr3t@bucket/prefix")
    assert "s3cr3t" not in str(caught.value) and "AKIAXXX" not in str(caught.value)
    with pytest.raises(ObjectStoreError, match="endpointurl .* carries credentials") as caught:
        ObjectStoreConfig("s3://bucket/prefix", endpointurl="http://minio:s3cr3t@127.0.0.1:9000")
    assert "s3cr3t" not in str(caught.value)


def test_credentials_are_never_in_repr():
    config = ObjectStoreConfig("s3://b/p", credentials={"access_key_id": "AKIA1", "secret_access_key": "s3cr3t"})
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in repr(ObjectStore(config))


def test_store_url_in_params_builds_the_remote_behind_the_local_directory(tmp_path: Path):
    params = {"store": {"dir": "cache", "url": "memory://p1", "endpointurl": ""}}
    store = open_store(params, tmp_path)
    assert store.directory == tmp_path / "cache" and store.remote.url == "memory://p1"
    assert open_store({"store": {"dir": "cache"}}, tmp_path).remote is None  # default: local only
    assert objectstore_config({"store": {"dir": "x"}}, tmp_path) is None


def test_a_dvc_remote_lends_its_endpoint_and_credentials(tmp_path: Path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_text("[core]\n    remote = s3\n['remote \"s3\"']\n    url = s3://bucket/dvc\n"
                                          "    endpointurl = http://127.0.0.1:9\n")
    (tmp_path / ".dvc/config.local").write_text("['remote \"s3\"']\n    access_key_id = AKIA1\n"
                                                "    secret_access_key = s3cr3t\n")
    config = objectstore_config({"store": {"url": "s3://bucket/shards", "remote": "s3"}}, tmp_path)
    assert config.endpointurl == "http://127.0.0.1:9"
    options = config.storage_options()
    assert (options["key"], options["secret"], options["endpoint_url"]) == ("AKIA1", "s3cr3t", "http://127.0.0.1:9")
    with pytest.raises(ObjectStoreError, match="'nope' is not a DVC remote here"):
        objectstore_config({"store": {"url": "s3://bucket/shards", "remote": "nope"}}, tmp_path)


# -- a local store in front of the remote ----------------------------------------------------
def test_a_second_machine_materialises_from_the_remote_with_an_empty_store(s3: S3Endpoint, tmp_path: Path):
    entry, path = shard_file(tmp_path, "a")
    first = ShardStore(StoreConfig(tmp_path / "one", 10**9), s3_store(s3))
    first.put(entry, path)
    second = ShardStore(StoreConfig(tmp_path / "two", 10**9), s3_store(s3))
    assert second.materialise(entry.address, tmp_path / "placed.h5") == entry
    assert (tmp_path / "placed.h5").read_bytes() == path.read_bytes()
    assert second.shard_path(entry.address).exists()  # read through: kept in the local directory
    gets = second.remote.counters.requests_get
    assert second.materialise(entry.address, tmp_path / "again.h5") == entry
    assert second.remote.counters.requests_get == gets  # the second time from the local directory


def test_layers_built_on_one_machine_are_reused_by_key_on_another(s3: S3Endpoint, tmp_path: Path):
    a, b = Project(tmp_path / "a"), Project(tmp_path / "b")
    store_a = ShardStore(StoreConfig(tmp_path / "a/store", 10**9), s3_store(s3))
    pre, pred = a.build(10, store_a)
    assert pre.counts["items_computed"] == 10
    store_b = ShardStore(StoreConfig(tmp_path / "b/store", 10**9), s3_store(s3))
    pre, pred = b.build(10, store_b)
    assert (pre.counts["items_computed"], pred.counts["items_computed"]) == (0, 0)
    assert (pre.counts["shards_reused"], pred.counts["shards_reused"]) == (4, 4)
    assert digests(a.pre, a.pred) == digests(b.pre, b.pred)
    assert store_b.remote.counters.requests_get > 0


def test_the_local_directory_is_trimmed_to_max_bytes_keeping_the_layers_shards(s3: S3Endpoint, tmp_path: Path):
    project = Project(tmp_path)
    store = ShardStore(StoreConfig(tmp_path / "store", 1), s3_store(s3))  # 1 byte: only protected shards stay
    pre, pred = project.build(10, store)
    kept = {entry.sha256 for entry in store.entries()}
    assert kept == {shard["sha256"] for shard in pred.record["shards"]} | {s["upstream"] for s in pred.record["shards"]}
    raw = {s["upstream"] for s in pre.record["shards"]}
    assert raw and not raw & kept  # the raw shards were trimmed locally at the end of infer…
    assert all(store.remote.has_blob(sha256) for sha256 in raw)  # …and are still in the remote
    again = ShardStore(StoreConfig(tmp_path / "store", 10**9), s3_store(s3))
    pre2 = project.preprocess(again)
    assert pre2.counts["items_computed"] == 0


def test_two_writers_of_one_key_leave_one_record_the_first(s3: S3Endpoint, tmp_path: Path, capsys):
    entry, path = shard_file(tmp_path, "k", b"first" * 100)
    other = StoreEntry(entry.address, hashlib.sha256(b"second" * 100).hexdigest(), 600, 1, "preprocessed")
    (tmp_path / "second.h5").write_bytes(b"second" * 100)
    one = ShardStore(StoreConfig(tmp_path / "one", 10**9), s3_store(s3))
    two = ShardStore(StoreConfig(tmp_path / "two", 10**9), s3_store(s3))
    one.put(entry, path)
    two.put(other, tmp_path / "second.h5")  # nondeterministic compute: other bytes under the same key
    assert "not deterministic" in capsys.readouterr().err
    assert s3_store(s3).get_record(entry.address) == entry
    record = json.loads(s3_store(s3).fs.cat_file(f"{s3.bucket}/team/shards/{entry.address[:2]}/{entry.address}.json"))
    assert record["sha256"] == entry.sha256


def test_a_damaged_blob_is_a_miss_then_repaired(s3: S3Endpoint, tmp_path: Path, capsys):
    entry, path = shard_file(tmp_path, "a")
    remote = s3_store(s3)
    remote.put_shard(entry, path)
    remote.fs.pipe_file(f"{remote.root}/blobs/{entry.sha256[:2]}/{entry.sha256}", b"x" * entry.size)  # same size
    with pytest.raises(DamagedBlob):
        remote.fetch_shard(entry.address, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
    store = ShardStore(StoreConfig(tmp_path / "local", 10**9), s3_store(s3))
    assert store.materialise(entry.address, tmp_path / "out.h5") is None
    assert "bytes differ" in capsys.readouterr().err
    store.put(entry, path)  # the stage recomputed it
    assert s3_store(s3).fetch_shard(entry.address, tmp_path / "fixed.h5") == entry


def test_the_store_unreachable_is_an_error_for_a_required_remote(s3: S3Endpoint, tmp_path: Path):
    entry, path = shard_file(tmp_path, "a")
    remote = ObjectStore(ObjectStoreConfig(f"s3://{s3.bucket}/team", endpointurl="http://127.0.0.1:9", retries=0,
                                           connect_timeout=0.5, read_timeout=0.5, required=True))
    with pytest.raises(ObjectStoreUnavailable, match="127.0.0.1:9|unreachable"):
        remote.get_record(entry.address)


# -- failures ----------------------------------------------------------------------------------
def test_the_store_unreachable_mid_run_warns_once_goes_on_locally_and_a_later_run_uploads(
        s3: S3Endpoint, tmp_path: Path, capsys):
    reference = Project(tmp_path / "local")
    reference.build(10, ShardStore(StoreConfig(tmp_path / "local/store", 10**9)))
    project = Project(tmp_path / "a")
    store = ShardStore(StoreConfig(tmp_path / "a/store", 10**9), s3_store(s3))
    project.grow(10)
    project.fetch(store)
    put, puts = store.put, []

    def put_then_stop(entry, source, immutable_source=False):  # the server goes away between two shards
        put(entry, source, immutable_source)
        puts.append(entry.address)
        if len(puts) == 1:
            s3.outage.stop()

    store.put = put_then_stop
    capsys.readouterr()
    pre, pred = project.preprocess(store), project.infer(store)
    err = capsys.readouterr().err
    assert err.count(f"object store s3://{s3.bucket}/team is unreachable") == 1, err
    assert (pre.counts["items_computed"], pred.counts["items_computed"]) == (10, 10)
    assert digests(project.pre, project.pred) == digests(reference.pre, reference.pred)  # results identical
    assert len(store.pending()) == len(puts) - 1 == 7  # every shard after the first, none lost

    s3.outage.start()  # the store is back: the next stage uploads what is pending
    later = ShardStore(StoreConfig(tmp_path / "a/store", 10**9), s3_store(s3))
    assert project.preprocess(later).counts["items_computed"] == 0
    assert later.pending() == []
    fresh = ShardStore(StoreConfig(tmp_path / "b/store", 10**9), s3_store(s3))
    other = Project(tmp_path / "b")
    pre, pred = other.build(10, fresh)
    assert (pre.counts["items_computed"], pred.counts["items_computed"]) == (0, 0)


def test_a_required_store_that_goes_away_stops_the_stage_naming_it(s3: S3Endpoint, tmp_path: Path):
    entry, path = shard_file(tmp_path, "a")
    store = ShardStore(StoreConfig(tmp_path / "local", 10**9), s3_store(s3, required=True))
    s3.outage.stop()
    with pytest.raises(ShardStoreError, match=f"s3://{s3.bucket}/team is unreachable.*store.required"):
        store.put(entry, path)
    with pytest.raises(ShardStoreError, match="unreachable"):
        store.materialise("f" * 64, tmp_path / "x.h5")


@pytest.mark.parametrize("partial", ["blob without record", "record without blob", "truncated blob"])
def test_a_partial_upload_is_a_miss_recomputed_and_repaired(s3: S3Endpoint, tmp_path: Path, partial: str):
    entry, path = shard_file(tmp_path, "a")
    remote = s3_store(s3)
    record = f"{remote.root}/shards/{entry.address[:2]}/{entry.address}.json"
    blob = f"{remote.root}/blobs/{entry.sha256[:2]}/{entry.sha256}"
    if partial == "blob without record":  # a writer that died between its two PUTs
        remote.put_blob(path)
    else:
        remote.put_shard(entry, path)
        if partial == "record without blob":
            remote.fs.rm(blob)
        else:
            remote.fs.pipe_file(blob, path.read_bytes()[: entry.size // 2])
    store = ShardStore(StoreConfig(tmp_path / "local", 10**9), s3_store(s3))
    assert store.materialise(entry.address, tmp_path / "out.h5") is None
    assert not (tmp_path / "out.h5").exists() and store._get_local(entry.address) is None
    store.put(entry, path)  # what the stage does after computing the miss
    assert remote.fs.exists(record) and remote.fs.size(blob) == entry.size
    assert s3_store(s3).fetch_shard(entry.address, tmp_path / "again.h5") == entry


@pytest.mark.parametrize("damage", ["other bytes, same size", "a record naming another address", "not json"])
def test_a_shard_whose_bytes_do_not_match_its_record_is_never_used(s3: S3Endpoint, tmp_path: Path, damage: str,
                                                                    capsys):
    entry, path = shard_file(tmp_path, "a")
    remote = s3_store(s3)
    remote.put_shard(entry, path)
    record = f"{remote.root}/shards/{entry.address[:2]}/{entry.address}.json"
    if damage == "other bytes, same size":
        remote.fs.pipe_file(f"{remote.root}/blobs/{entry.sha256[:2]}/{entry.sha256}", b"x" * entry.size)
    elif damage == "a record naming another address":  # crafted: another key's bytes under this key
        remote.fs.pipe_file(record, json.dumps({**json.loads(remote.fs.cat_file(record)), "address": "e" * 64}).encode())
    else:
        remote.fs.pipe_file(record, b"{not json")
    store = ShardStore(StoreConfig(tmp_path / "local", 10**9), s3_store(s3))
    assert store.materialise(entry.address, tmp_path / "out.h5") is None
    assert not (tmp_path / "out.h5").exists()
    assert "WARNING" in capsys.readouterr().err
    store.put(entry, path)
    assert s3_store(s3).fetch_shard(entry.address, tmp_path / "fixed.h5") == entry


@pytest.mark.parametrize("backend", ["s3", "file"])
def test_writers_of_one_key_at_once_leave_one_consistent_record(s3: S3Endpoint, tmp_path: Path, backend: str,
                                                                capsys):
    def remote() -> ObjectStore:
        return s3_store(s3) if backend == "s3" else ObjectStore(ObjectStoreConfig((tmp_path / "bucket").as_uri()))

    address = "c" * 64
    writers = []
    for i in range(8):  # half of them compute other bytes (a nondeterministic stage)
        data = (b"even" if i % 2 == 0 else b"odd") * 500
        (tmp_path / f"w{i}.h5").write_bytes(data)
        entry = StoreEntry(address, hashlib.sha256(data).hexdigest(), len(data), 1, "preprocessed")
        writers.append((ShardStore(StoreConfig(tmp_path / f"local{i}", 10**9), remote()), entry, tmp_path / f"w{i}.h5"))
    barrier = threading.Barrier(len(writers))

    def write(store: ShardStore, entry: StoreEntry, path: Path) -> None:
        barrier.wait()
        store.put(entry, path)

    with ThreadPoolExecutor(len(writers)) as pool:
        for future in [pool.submit(write, *writer) for writer in writers]:
            future.result()  # no exception reaches the user
    held = remote().get_record(address)
    assert held in [entry for _, entry, _ in writers]
    # exactly the writers whose bytes differ from the record's were told: none overwrote it silently
    assert capsys.readouterr().err.count("not deterministic") == 4
    assert remote().fetch_shard(address, tmp_path / "out.h5") == held  # its blob is complete and matches
    assert all(store.pending() == [] for store, _, _ in writers)


def test_doctor_reports_the_remote_reachable_or_not_without_secrets(s3: S3Endpoint, tmp_path: Path):
    config = ObjectStoreConfig(f"s3://{s3.bucket}/team", endpointurl=s3.url, retries=0, connect_timeout=1,
                               read_timeout=1, credentials={"access_key_id": s3.key_id, "secret_access_key": s3.secret})
    store = ShardStore(StoreConfig(tmp_path / "store", 10**9), ObjectStore(config))
    findings = check_store(store)
    assert (findings[0].level, findings[0].message) == ("ok", f"shard store remote s3://{s3.bucket}/team "
                                                               f"(endpoint {s3.url}): reachable")
    s3.outage.stop()
    store = ShardStore(StoreConfig(tmp_path / "store", 10**9), ObjectStore(config))
    store._mark_pending("a" * 64)
    findings = check_store(store)
    assert findings[0].level == "WARN" and "unreachable" in findings[0].message
    assert "1 shards computed while" in findings[1].message
    assert not any(s3.secret in f.message + f.fix for f in findings)


def test_a_damaged_local_copy_is_replaced_from_the_remote(s3: S3Endpoint, tmp_path: Path):
    entry, path = shard_file(tmp_path, "a")
    store = ShardStore(StoreConfig(tmp_path / "local", 10**9), s3_store(s3))
    store.put(entry, path)
    local = store.shard_path(entry.address)
    local.chmod(0o644)
    local.write_bytes(b"x" * entry.size)  # same size: only the hash tells
    assert store.materialise(entry.address, tmp_path / "out.h5") == entry
    assert (tmp_path / "out.h5").read_bytes() == path.read_bytes()


def test_an_object_store_travels_to_a_worker_as_its_config(s3: S3Endpoint, tmp_path: Path):
    import pickle

    entry, path = shard_file(tmp_path, "a")
    remote = s3_store(s3)
    remote.put_shard(entry, path)
    worker = pickle.loads(pickle.dumps(remote))
    assert worker.config == remote.config and worker.counters.requests_put == 0
    assert worker.fetch_shard(entry.address, tmp_path / "w.h5") == entry
    # credentials a DVC remote lent this process never travel in the pickle (it crosses the network to workers)
    lent = ObjectStore(ObjectStoreConfig(remote.config.url, endpointurl=s3.url,
                                         credentials={"access_key_id": s3.key_id, "secret_access_key": s3.secret}))
    payload = pickle.dumps(lent)
    assert s3.secret.encode() not in payload and pickle.loads(payload).config.credentials == {}


def test_a_bucket_that_does_not_exist_is_unreachable_not_an_empty_store(s3: S3Endpoint, tmp_path: Path, capsys):
    entry, path = shard_file(tmp_path, "a")
    config = ObjectStoreConfig("s3://no-such-bucket/team", endpointurl=s3.url, retries=0)
    with pytest.raises(ObjectStoreUnavailable, match="no-such-bucket.*does not exist"):
        ObjectStore(config).ping()
    store = ShardStore(StoreConfig(tmp_path / "local", 10**9), ObjectStore(config))
    assert store.materialise(entry.address, tmp_path / "out.h5") is None  # a GET that finds nothing: a miss
    store.put(entry, path)  # the PUT cannot land: warned, kept locally, pending
    assert "does the bucket exist?" in capsys.readouterr().err
    assert store.pending() == [entry.address] and store.get(entry.address) == entry
    # `evalstack gc` down to nothing still keeps a shard that exists nowhere else yet
    report = store.gc(set(), max_bytes=0)
    assert report.removed == [] and store.get(entry.address) == entry


def test_a_backend_without_a_known_atomic_create_is_refused():
    with pytest.raises(ObjectStoreError, match="scheme 'gs' is not supported"):
        ObjectStoreConfig("gs://bucket/prefix")


def test_a_refused_create_and_a_forbidden_read_are_answers_not_an_outage(tmp_path: Path):
    """A 409/412 on a create-only PUT is a lost race (the record is read back); a 403 on a GET (no ListBucket
    permission) is a miss. Neither marks the store down for the rest of the run."""
    store = ObjectStore(ObjectStoreConfig(f"memory://evalstack-{tmp_path.name}"))

    def refused() -> None:
        raise OSError("An error occurred (ConditionalRequestConflict) when calling the PutObject operation (409)")

    def forbidden() -> None:
        raise PermissionError("Forbidden")

    with pytest.raises(FileExistsError):
        store._call("PUT shards/ab/x.json", refused)
    with pytest.raises(FileNotFoundError):
        store._call("GET shards/ab/x.json", forbidden)
    assert store.down is None
    with pytest.raises(ObjectStoreUnavailable):
        store._call("PUT blobs/ab/x", forbidden)
    assert store.down is not None
