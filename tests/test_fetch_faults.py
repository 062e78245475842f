"""Fetch against a faulty loopback server: Retry-After, honest request counts, short bodies, skipped items.

Issue 15, findings 8 (Retry-After ignored), 10 (skipped items silent, retries uncounted) and 11
(a short body reported as "broke off after 0 bytes"), and the acceptance run: a server that
faults 30 % of requests still yields every card, or the exact list of the ones that failed.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import urllib3.util.retry

from evalstack.cli.verify import verify_layer
from evalstack.core.layers import Layer
from evalstack.fetch.raw_layer import FetchConfig, fetch_raw_layer
from evalstack.sources.catalog import SourceConfig
from tests.conftest import store_in
from tests.loopback import ALL_FAULT_KINDS, Faults, PadServer
from tests.test_fetch import make_registry
from tests.test_fetch_http import http_config

N_CARDS = 20  # the pad_dataset fixture


def image_paths(root: Path) -> dict[int, str]:
    paths = {}
    for split in ("dev", "test"):
        with open(root / f"metadata_{split}.csv", newline="") as handle:
            paths.update({int(row["id"]): "/" + row["url"] for row in csv.DictReader(handle)})
    return paths


@pytest.fixture
def urllib3_sleeps(monkeypatch) -> list[float]:
    """What urllib3's Retry asks to sleep (Retry-After, backoff), recorded instead of slept."""
    asked: list[float] = []

    class Clock:
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            asked.append(seconds)

    monkeypatch.setattr(urllib3.util.retry, "time", Clock())
    return asked


# -- finding 8: Retry-After ---------------------------------------------------------------------
@pytest.mark.parametrize("asked, waited", [("7", 7.0), ("3600", 60.0)])
def test_retry_after_is_honoured_up_to_a_cap(pad_dataset: Path, tmp_path: Path, urllib3_sleeps, asked, waited):
    faults = Faults(rate=1.0, kinds=("429",), faulty_attempts=2, retry_after=asked)
    with PadServer(pad_dataset, faults) as server:
        result = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    n_paths = len(server.gets)  # 2 registries + 20 images, each answered 429 twice, then 200
    assert server.faults_served["429"] == 2 * n_paths
    assert urllib3_sleeps.count(waited) == 2 * n_paths, urllib3_sleeps[:8]  # as asked, capped at retry_after_max
    assert len(Layer.open(tmp_path / "raw")) == N_CARDS and result.report.failed == []


# -- finding 10: every request counted; skipped items said on the console ----------------------
@pytest.mark.parametrize("seed", [2, 5])
def test_get_counts_include_retries_and_timeouts(pad_dataset: Path, tmp_path: Path, urllib3_sleeps, seed: int):
    faults = Faults(rate=0.3, kinds=ALL_FAULT_KINDS, seed=seed, stall_seconds=0.8)
    with PadServer(pad_dataset, faults) as server:
        result = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    served = sum(server.gets.values())
    activity = result.report.activity
    assert sum(server.faults_served.values()) > 0 and served > len(server.gets)
    assert activity["http_gets"] == served  # the old count left out retries and timed-out requests
    assert activity["http_retries"] == served - len(server.gets)  # every path was asked for once, then retried


def test_skipped_items_are_printed_and_not_counted_as_new(tmp_path: Path, capsys):
    registry = make_registry(tmp_path / "src", n=12)
    missing = sorted(tmp_path.glob("src/images/*.png"))[:7]
    for path in missing:
        path.unlink()
    config = FetchConfig(SourceConfig(registries={"dev": str(registry)}), shard_bytes=4 * 3698, on_error="skip", max_skipped="90%",
                         report=tmp_path / "report.json")
    result = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    err = capsys.readouterr().err
    assert f"WARNING skipped 7 items that failed (on_error: skip); all 7 with their causes in {tmp_path / 'report.json'}:" in err
    for failure in result.report.failed[:5]:
        assert f"  id {failure.id} ({failure.image_name}): file not found" in err
    assert f"id {result.report.failed[5].id} " not in err and "  … and 2 more" in err
    assert result.report.activity["new_shard_items"] == 5 == len(Layer.open(tmp_path / "raw"))


# -- finding 11: a short body names the bytes that arrived -----------------------------------
def test_a_body_shorter_than_its_content_length_reports_what_arrived(pad_dataset: Path, tmp_path: Path):
    item, path = next(iter(image_paths(pad_dataset).items()))
    size = (pad_dataset / path.lstrip("/")).stat().st_size
    with PadServer(pad_dataset, Faults(always={path: "short"})) as server:
        result = fetch_raw_layer(http_config(server, tmp_path, on_error="skip", max_skipped="90%"), tmp_path / "raw",
                                 store_in(tmp_path / "store"))
    (failure,) = result.report.failed
    assert failure.id == item
    assert f"transfer broke off after {size // 2} of {size} bytes (IncompleteRead)" in failure.cause
    assert "(gave up after 6 attempts)" in failure.cause


# -- acceptance: 30 % of requests fault ---------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 3])
def test_thirty_percent_faults_give_every_card(pad_dataset: Path, tmp_path: Path, urllib3_sleeps, seed: int):
    faults = Faults(rate=0.3, kinds=ALL_FAULT_KINDS, seed=seed, stall_seconds=0.8)
    with PadServer(pad_dataset, faults) as server:
        result = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    assert sum(server.faults_served.values()) >= 0.2 * len(server.gets)
    assert result.report.failed == [] and len(Layer.open(tmp_path / "raw")) == N_CARDS
    assert verify_layer(tmp_path / "raw") == []


def test_thirty_percent_faults_and_dead_items_give_the_exact_failed_ids(pad_dataset: Path, tmp_path: Path, urllib3_sleeps):
    paths = image_paths(pad_dataset)
    dead = dict(list(paths.items())[3:6])  # one answers 404, one 500 forever, one always short
    always = dict(zip(dead.values(), ("404", "500", "short")))
    faults = Faults(rate=0.3, kinds=ALL_FAULT_KINDS, seed=7, stall_seconds=0.8, always=always)
    with PadServer(pad_dataset, faults) as server:
        result = fetch_raw_layer(http_config(server, tmp_path, on_error="skip", max_skipped="90%"), tmp_path / "raw",
                                 store_in(tmp_path / "store"))
    assert [failure.id for failure in result.report.failed] == sorted(dead)
    assert set(Layer.open(tmp_path / "raw").column("id")) == set(paths) - set(dead)
    assert verify_layer(tmp_path / "raw") == []
