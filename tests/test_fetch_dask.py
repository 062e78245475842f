"""Fetch on Dask workers that share nothing with the client but an object store (issue 26 point 2).

Real components, started here: moto's S3 server, a loopback PAD server, and a `dask scheduler` with
two `dask worker` processes (the CLIs) in a directory holding no copy of the project. The workers
get the S3 credentials from their own environment; the client's are only in its store config.
Each Dask fetch is compared with the plain fetch of the same source.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from evalstack.cache.objectstore import ObjectStore, ObjectStoreConfig
from evalstack.cache.shardstore import ShardStore, StoreConfig
from evalstack.core.layers import Layer
from evalstack.demo.cards import write_dataset
from evalstack.fetch.distributed import ClusterFetch
from evalstack.fetch.raw_layer import FetchFailed, FetchResult, fetch_raw_layer
from evalstack.sources.catalog import SourceConfig
from tests.conftest import store_in
from tests.loopback import Faults, PadServer
from tests.servers import S3Endpoint, dask_processes, moto_s3
from tests.test_fetch_http import N_CARDS, http_config, registry_rows, send_to_a_dead_host

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def dask_client(s3: S3Endpoint, tmp_path_factory) -> Iterator[object]:
    from distributed import Client

    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    environment |= {"PYTHONPATH": str(SRC),  # the library only: no project, no tests
                    "AWS_ACCESS_KEY_ID": s3.key_id, "AWS_SECRET_ACCESS_KEY": s3.secret,
                    "AWS_DEFAULT_REGION": "us-east-1"}
    with dask_processes(tmp_path_factory.mktemp("dask"), workers=2, environment=environment) as cluster:
        with Client(cluster.address) as client:
            yield client


def s3_shard_store(s3: S3Endpoint, directory: Path, prefix: str) -> ShardStore:
    # The client's credentials come from its config (as from a DVC remote): they must not reach the workers.
    credentials = {"access_key_id": s3.key_id, "secret_access_key": s3.secret}
    remote = ObjectStore(ObjectStoreConfig(f"s3://{s3.bucket}/{prefix}", endpointurl=s3.url, region="us-east-1",
                                           retries=1, credentials=credentials))
    return ShardStore(StoreConfig(directory, max_bytes=1 << 40), remote)


def on_dask(config, out_dir: Path, store: ShardStore, client) -> FetchResult:
    return fetch_raw_layer(config, out_dir, store, ClusterFetch(store.remote, lambda: client, rows_per_task=4))


def layer_files(layer_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(layer_dir.iterdir())}


def test_a_dask_fetch_gives_the_plain_fetchs_layer_and_grows_by_the_new_items_only(
        pad_dataset: Path, tmp_path: Path, s3: S3Endpoint, dask_client):
    store = s3_shard_store(s3, tmp_path / "store", tmp_path.name)
    with PadServer(pad_dataset) as server:
        result = on_dask(http_config(server, tmp_path), tmp_path / "dask", store, dask_client)
        assert server.image_gets() == N_CARDS  # each image once, by the workers
        activity = result.report.activity
        assert activity["worker_http_gets"] == N_CARDS and activity["downloaded"] == N_CARDS
        assert activity["packs"] >= N_CARDS / 4  # one pack per task at least (4 rows per task)
        assert activity["http_gets"] == 2  # this process read the two registries and no image
        plain = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "plain", store_in(tmp_path / "plain-store"))
    assert layer_files(tmp_path / "dask") == layer_files(tmp_path / "plain")  # every shard and index.json
    assert result.index.to_json() == plain.index.to_json()

    write_dataset(pad_dataset, n_cards=N_CARDS + 2, seed=0, start=N_CARDS, workers=1)  # +10 %
    for path in (tmp_path / "dask").iterdir():  # as `dvc repro` does before it runs the stage
        path.unlink()
    with PadServer(pad_dataset) as server:
        grown = on_dask(http_config(server, tmp_path), tmp_path / "dask", store, dask_client)
        assert server.image_gets() == 2 and grown.report.activity["worker_http_gets"] == 2
        fetch_raw_layer(http_config(server, tmp_path), tmp_path / "fresh", store_in(tmp_path / "fresh-store"))
    assert grown.index.n_items == N_CARDS + 2 and grown.report.activity["downloaded"] == 2
    assert layer_files(tmp_path / "dask") == layer_files(tmp_path / "fresh")


def test_failing_items_are_reported_as_the_plain_fetch_reports_them(
        pad_dataset: Path, tmp_path: Path, s3: S3Endpoint, dask_client):
    rows = registry_rows(pad_dataset)
    doomed = {int(rows[3]["id"]), int(rows[11]["id"])}
    faults = Faults(always={"/" + row["url"]: "500" for row in rows if int(row["id"]) in doomed})
    store = s3_shard_store(s3, tmp_path / "store", tmp_path.name)
    reports = {}
    with PadServer(pad_dataset, faults) as server:
        for path in ("plain", "dask"):
            config = http_config(server, tmp_path, report=tmp_path / f"{path}-fail.json")
            with pytest.raises(FetchFailed, match=rf"2 items failed.*\n  id {min(doomed)} .*HTTP 500"):
                if path == "dask":
                    on_dask(config, tmp_path / path, store, dask_client)
                else:
                    fetch_raw_layer(config, tmp_path / path, store_in(tmp_path / "plain-store"))
            reports[path] = json.loads(config.report.read_text().replace(str(config.report), "REPORT"))
        gets = dict(server.gets)
        skipped = on_dask(http_config(server, tmp_path, on_error="skip", max_skipped="90%",
                                      report=tmp_path / "dask-skip.json"), tmp_path / "dask", store, dask_client)
        # what arrived in the failed run waits in the download area: only the doomed two are asked for again
        asked_again = {path for path, n in server.gets.items() if n != gets.get(path)}
        assert {path for path in asked_again if path.startswith("/images/")} == set(faults.always)
        fetch_raw_layer(http_config(server, tmp_path, on_error="skip", max_skipped="90%",
                                    report=tmp_path / "plain-skip.json"), tmp_path / "plain", store_in(tmp_path / "plain-store"))
    assert reports["dask"] == reports["plain"] and {f["id"] for f in reports["dask"]["failed"]} == doomed
    assert {f.id for f in skipped.report.failed} == doomed and skipped.report.activity["downloaded"] == 0
    assert (tmp_path / "dask-skip.json").read_text() == (tmp_path / "plain-skip.json").read_text()
    assert layer_files(tmp_path / "dask") == layer_files(tmp_path / "plain")
    assert set(Layer.open(tmp_path / "dask").column("id")) == {int(r["id"]) for r in rows} - doomed


def test_images_a_worker_checked_with_other_checks_are_checked_again_here(
        pad_dataset: Path, tmp_path: Path, s3: S3Endpoint, dask_client, monkeypatch):
    # The index records this machine's image checks (sources/images.py, Pillow) as what checked its items. A
    # worker with another evalstack or Pillow checked them its own way, so they are checked again here: an
    # image this machine's checks refuse fails as in a plain fetch, not lands in the layer as checked.
    import evalstack.fetch.distributed as distributed
    import evalstack.fetch.downloads as downloads
    from evalstack.sources.images import check_image
    from evalstack.sources.registry import SourceError

    refused = int(registry_rows(pad_dataset)[5]["id"])

    def newer(data: bytes, max_pixels: int, what: str):  # this machine's checks: one more rule
        size = check_image(data, max_pixels, what)
        if what.startswith(f"item id {refused} "):
            raise SourceError(f"{what}: refused by this machine's checks")
        return size

    for module in (distributed, downloads):
        monkeypatch.setattr(module, "check_image", newer)  # the workers keep their own, unpatched
    store = s3_shard_store(s3, tmp_path / "store", tmp_path.name)
    with PadServer(pad_dataset) as server:
        same = on_dask(http_config(server, tmp_path, on_error="skip", max_skipped=1), tmp_path / "same", store,
                       dask_client)
        assert same.report.failed == []  # the workers' checks are this machine's: taken as they are
        monkeypatch.setattr(distributed, "item_checks", lambda: {"code": {"evalstack.sources.images": "newer"}})
        fresh = s3_shard_store(s3, tmp_path / "fresh-store", tmp_path.name + "-fresh")  # the workers download all
        results = {path: run(http_config(server, tmp_path, on_error="skip", max_skipped=1), tmp_path / path)
                   for path, run in (("dask", lambda c, o: on_dask(c, o, fresh, dask_client)),
                                     ("plain", lambda c, o: fetch_raw_layer(c, o, store_in(tmp_path / "plain-s"))))}
    failed = {path: [(f.id, f.cause) for f in result.report.failed] for path, result in results.items()}
    assert failed["dask"] == failed["plain"] == [(refused, failed["plain"][0][1])]
    assert "refused by this machine's checks" in failed["plain"][0][1]


def test_a_source_that_goes_away_mid_fetch_stops_it_and_keeps_the_previous_layer(
        pad_dataset: Path, tmp_path: Path, s3: S3Endpoint, dask_client):
    rows = registry_rows(pad_dataset)
    store = s3_shard_store(s3, tmp_path / "store", tmp_path.name)
    with PadServer(pad_dataset) as server:
        config = http_config(server, tmp_path, on_error="skip", max_skipped="90%")
        on_dask(config, tmp_path / "raw", store, dask_client)
        before = layer_files(tmp_path / "raw")
        moved = send_to_a_dead_host(pad_dataset, rows[-3:])
        for path in (tmp_path / "raw").iterdir():
            path.unlink()
        with pytest.raises(FetchFailed, match=r"the source became unreachable: .*cannot reach 127.0.0.1:9"):
            on_dask(config, tmp_path / "raw", store, dask_client)
        report = json.loads(config.report.read_text())
    moved_ids = {int(i) for i in moved}
    assert report["offline"] and moved_ids & {f["id"] for f in report["failed"]}
    assert all("cannot reach 127.0.0.1:9" in f["cause"] or f["cause"].startswith("not attempted")
               for f in report["failed"])
    assert layer_files(tmp_path / "raw") == before and len(Layer.open(tmp_path / "raw")) == N_CARDS


def test_without_a_cluster_or_an_object_store_fetch_stays_in_this_process(tmp_path: Path):
    from evalstack.fetch.distributed import fetch_cluster

    plain = store_in(tmp_path / "store")
    with_url = replace_remote(plain, ObjectStore(ObjectStoreConfig(f"memory://{tmp_path.name}",
                                                                   credentials={"access_key_id": "A", "secret_access_key": "S"})))
    cases = [({"executor": "local"}, with_url), ({"executor": "dask", "dask": {"address": ""}}, with_url),
             ({"executor": "dask", "dask": {"address": "tcp://127.0.0.1:9"}}, plain),
             ({"executor": "dask", "dask": {"address": "tcp://127.0.0.1:9"}}, None)]
    for params, store in cases:
        with fetch_cluster(params, store) as cluster:
            assert cluster is None, params
    with fetch_cluster({"executor": "dask", "dask": {"address": "tcp://127.0.0.1:9"}, "fetch": {"rows_per_task": 8}},
                       with_url) as cluster:
        assert cluster is not None and cluster.rows_per_task == 8  # connects only when there is work
        worker = cluster.worker_store()
    assert worker.required and not worker.credentials


def replace_remote(store: ShardStore, remote: ObjectStore) -> ShardStore:
    return ShardStore(replace(store.config), remote)


def test_a_worker_answer_missing_a_row_is_an_error_not_a_shorter_layer():
    from evalstack.fetch.distributed import FetchOnClusterFailed, RunResult, _check_covered
    from evalstack.sources.registry import RegistryRow

    rows = [RegistryRow(i, i, "x", 0, "", f"http://h/{i}.png", "0" * 32, f"{i}.png", "dev", f"http://h/{i}.png")
            for i in (1, 2, 3)]
    answered = RunResult()
    _check_covered(rows, [(1, "k", 1, "area"), (2, "k", 1, "area"), (3, "k", 1, "area")], answered)
    with pytest.raises(FetchOnClusterFailed, match=r"missing: \[2\]"):
        _check_covered(rows, [(1, "k", 1, "area"), (3, "k", 1, "area")], answered)


def test_cards_fetched_on_workers_are_revalidated_as_the_plain_fetchs_are(pad_dataset: Path, tmp_path: Path,
                                                                          s3: S3Endpoint, dask_client):
    """The workers send back the validators of what they downloaded, so a PAD API card named by its URL alone
    is asked with a HEAD next time, not downloaded again, and one replaced at its URL is (a review found every
    card downloaded again on every Dask fetch before)."""
    from tests.test_fetch_http import _replace_image

    store = s3_shard_store(s3, tmp_path / "store", tmp_path.name)
    with PadServer(pad_dataset) as server:
        config = http_config(server, tmp_path, source=SourceConfig(kind="pad_api", url=server.url + "api/v2"))
        on_dask(config, tmp_path / "dask", store, dask_client)
        again = on_dask(config, tmp_path / "dask", store, dask_client)
        assert again.report.activity["changed_or_unvalidated"] == 0 and again.report.activity["downloaded"] == 0
        cards = server.cards()
        _replace_image(pad_dataset, cards[5], cards[6])
        changed = on_dask(config, tmp_path / "dask", store, dask_client)
        assert changed.report.activity["downloaded"] == 1
        fetch_raw_layer(config, tmp_path / "fresh", store_in(tmp_path / "fresh-store"))
    assert layer_files(tmp_path / "dask") == layer_files(tmp_path / "fresh")
