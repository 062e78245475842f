"""Fetch over HTTP against a loopback PAD server: faults, security, incremental, offline."""
import csv
import hashlib
import json
import os
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from evalstack.cli.verify import verify_layer
from evalstack.core.layers import Layer
from evalstack.demo.cards import write_dataset
from evalstack.fetch.raw_layer import FetchConfig, FetchFailed, fetch_raw_layer
from evalstack.sources.catalog import SourceConfig
from evalstack.sources.registry import SourceError
from evalstack.sources.transport import TransportConfig
from tests.conftest import store_in
from tests.loopback import FAULT_KINDS, Faults, PadServer, client_read_timeout

N_CARDS = 20  # the pad_dataset fixture
CARD_BYTES = 1_370_000  # about one embedded card photo


def http_config(server: PadServer, tmp_path: Path, **changes) -> FetchConfig:
    source = SourceConfig(registries={split: f"{server.url}metadata_{split}.csv" for split in ("dev", "test")})
    transport = TransportConfig(connect_timeout=2, read_timeout=client_read_timeout(server.faults), retries=5,
                                backoff=0.01, pool_size=4)
    config = FetchConfig(source, shard_bytes=8 * CARD_BYTES, workers=4, transport=transport,
                         report=tmp_path / "report.json")
    return replace(config, **changes)


def registry_rows(root: Path) -> list[dict]:
    rows = []
    for split in ("dev", "test"):
        with open(root / f"metadata_{split}.csv", newline="") as handle:
            rows += list(csv.DictReader(handle))
    return sorted(rows, key=lambda row: int(row["id"]))


def edit_registry(root: Path, edit) -> None:
    """Apply `edit(row) -> row | None` to every row of both registries (None drops the row)."""
    for split in ("dev", "test"):
        path = root / f"metadata_{split}.csv"
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields, rows = reader.fieldnames, list(reader)
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(row for row in map(edit, rows) if row is not None)


def send_to_a_dead_host(root: Path, rows: list[dict]) -> set[str]:
    """Point `rows` at a host that refuses connections (port 9 on loopback); returns their ids."""
    moved = {row["id"] for row in rows}
    edit_registry(root, lambda row: {**row, "url": "http://127.0.0.1:9/x.png", "hashlib_md5": "0" * 32}
                  if row["id"] in moved else row)
    return moved


def shard_bytes(layer_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(layer_dir.glob("*.h5"))}


def test_http_registry_gives_the_same_shards_as_the_local_registry(pad_dataset: Path, tmp_path: Path):
    with PadServer(pad_dataset) as server:
        fetch_raw_layer(http_config(server, tmp_path), tmp_path / "http", store_in(tmp_path / "store"))
        assert server.image_gets() == N_CARDS
    local = SourceConfig(registries={s: str(pad_dataset / f"metadata_{s}.csv") for s in ("dev", "test")})
    fetch_raw_layer(replace(http_config(server, tmp_path), source=local), tmp_path / "local", store_in(tmp_path / "s2"))
    assert shard_bytes(tmp_path / "http") == shard_bytes(tmp_path / "local")
    assert verify_layer(tmp_path / "http") == []


def test_every_item_arrives_through_30_percent_faults(pad_dataset: Path, tmp_path: Path):
    faults = Faults(rate=0.3, seed=4)
    with PadServer(pad_dataset, faults) as server:
        result = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    assert set(server.faults_served) == set(FAULT_KINDS)  # each kind was injected and survived
    assert sum(server.faults_served.values()) >= 0.2 * N_CARDS
    assert result.report.failed == [] and len(Layer.open(tmp_path / "raw")) == N_CARDS
    assert verify_layer(tmp_path / "raw") == []


def test_exhausted_retries_report_the_exact_ids_and_keep_what_arrived(pad_dataset: Path, tmp_path: Path):
    rows = registry_rows(pad_dataset)
    doomed = {int(rows[3]["id"]), int(rows[11]["id"])}
    faults = Faults(rate=0.3, seed=1, always={"/" + row["url"]: "500" for row in rows if int(row["id"]) in doomed})
    with PadServer(pad_dataset, faults) as server:
        with pytest.raises(FetchFailed, match=rf"2 items failed.*\n  id {min(doomed)} .*HTTP 500"):
            fetch_raw_layer(http_config(server, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
        report = (tmp_path / "report.json").read_text()
        assert all(f'"id": {i}' in report for i in doomed)
        gets_after_failure = dict(server.gets)
        skipped = fetch_raw_layer(http_config(server, tmp_path, on_error="skip", max_skipped="90%"), tmp_path / "raw", store_in(tmp_path / "store"))
        assert {f.id for f in skipped.report.failed} == doomed
        assert set(Layer.open(tmp_path / "raw").column("id")) == {int(r["id"]) for r in rows} - doomed
        # Nothing that arrived is downloaded twice: the second run asked only for the doomed two.
        asked_again = {path for path, n in server.gets.items() if n != gets_after_failure.get(path)}
        assert {p for p in asked_again if p.startswith("/images/")} == set(faults.always)
        assert skipped.report.activity["downloaded"] == 0
        server.faults.always.clear()
        gets = server.image_gets()
        healed = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
        activity = healed.report.activity
        assert server.image_gets() - gets == 2 and activity["downloaded"] == 2
        # The two land in the shards their ids fall in; those shards are rewritten from bytes already here.
        assert activity["kept_in_place"] + activity["new_shard_items"] == N_CARDS
        assert activity["bytes_from_old_shards"] + activity["from_download_area"] == activity["new_shard_items"]
    assert len(Layer.open(tmp_path / "raw")) == N_CARDS


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A real decompression bomb: 400 MB of grey pixels that deflate to a few hundred KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer, row = zlib.compressobj(9), b"\x00" * (width + 1)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def restate_md5(root: Path, url: str, data: bytes) -> None:
    """Make the registry state the md5 of `data` for the row with this url (so only the image check can fail)."""
    md5 = hashlib.md5(data).hexdigest()
    edit_registry(root, lambda row: {**row, "hashlib_md5": md5} if row["url"] == url else row)


BAD_ITEMS = {
    "md5 mismatch": ("body", lambda root, url: b"\x89PNG other bytes", None, r"md5 [0-9a-f]{32} differs"),
    "garbage bytes": ("body", lambda root, url: b"<html>garbage</html>", "restate", r"not a decodable image"),
    "404": ("always", "404", None, r"HTTP 404"),
    "20000x20000 png": ("body", lambda root, url: bomb_png(), "restate", r"400000000 pixels exceeds the cap"),
    "truncated image data": ("body", None, "restate", r"truncated or damaged image data"),
}


def truncated_png(root: Path, url: str) -> bytes:
    """Valid chunks and CRCs around a deflate stream cut in half: `verify()` passes, decoding does not."""
    from PIL import Image

    with Image.open(root / url) as image:
        raw = image.convert("RGB").tobytes()
    width, height = image.size
    lines = b"".join(b"\x00" + raw[y * width * 3 : (y + 1) * width * 3] for y in range(height))
    packed = zlib.compress(lines)
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", packed[: len(packed) // 2]) + chunk(b"IEND", b"")


@pytest.mark.parametrize("case", sorted(BAD_ITEMS))
def test_a_bad_item_gives_a_clear_error_naming_it(case: str, pad_dataset: Path, tmp_path: Path):
    row = registry_rows(pad_dataset)[5]
    how, make, restate, cause = BAD_ITEMS[case]
    faults = Faults()
    if how == "always":
        faults.always["/" + row["url"]] = make
    else:
        data = (make or truncated_png)(pad_dataset, row["url"])
        faults.bodies["/" + row["url"]] = data
        if restate:
            restate_md5(pad_dataset, row["url"], data)
    with PadServer(pad_dataset, faults) as server:
        with pytest.raises(FetchFailed, match=rf"id {row['id']} \({row['image_name']}\): .*{cause}"):
            fetch_raw_layer(http_config(server, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    assert not (tmp_path / "raw/index.json").exists()  # no half layer is accepted


REGISTRY_EDITS = {
    "malformed row": (lambda row: {**row, "sample_id": "fifty"}, SourceError, r"line \d+ \(id '{id}'\): malformed row"),
    "duplicate id": (lambda row: {**row, "id": "{prev}"}, SourceError, r"duplicate id {prev}"),
    "../ in image_name": (lambda row: {**row, "image_name": "../../etc/passwd"}, SourceError,
                          r"\(id '{id}'\): unsafe image_name '../../etc/passwd'"),
    "../ in url": (lambda row: {**row, "url": "../../outside.png"}, SourceError, r"\(id '{id}'\): unsafe url"),
    "ftp:// url": (lambda row: {**row, "url": "ftp://127.0.0.1/x.png"}, SourceError,
                   r"item id {id} .*URL scheme 'ftp' refused"),
}


@pytest.mark.parametrize("case", sorted(REGISTRY_EDITS))
def test_a_bad_registry_row_gives_a_clear_error_naming_it(case: str, pad_dataset: Path, tmp_path: Path):
    rows = registry_rows(pad_dataset)
    target, previous = rows[6], rows[5]
    edit, error, message = REGISTRY_EDITS[case]
    def apply(row: dict) -> dict:
        if row["id"] != target["id"]:
            return row
        return {k: v.format(prev=previous["id"]) for k, v in edit(row).items()}
    edit_registry(pad_dataset, apply)
    with PadServer(pad_dataset) as server:
        with pytest.raises(error, match=message.format(id=target["id"], prev=previous["id"])):
            fetch_raw_layer(http_config(server, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
        assert server.image_gets() <= N_CARDS - 1


def test_redirects_stay_on_the_source_host(pad_dataset: Path, tmp_path: Path):
    rows = registry_rows(pad_dataset)
    with PadServer(pad_dataset) as server:
        port = server.url.rsplit(":", 1)[1].rstrip("/")
        server.faults.redirects["/moved.png"] = "/" + rows[0]["url"]  # same host: followed
        server.faults.redirects["/" + rows[1]["url"]] = f"http://127.0.0.2:{port}/{rows[1]['url']}"
        edit_registry(pad_dataset, lambda row: {**row, "url": "moved.png"} if row["id"] == rows[0]["id"] else row)
        with pytest.raises(FetchFailed, match=rf"id {rows[1]['id']} .*refused a redirect .* to another scheme or host") as info:
            fetch_raw_layer(http_config(server, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
        assert f"id {rows[0]['id']} " not in str(info.value)
        assert server.gets["/" + rows[0]["url"]] == 1


def test_the_size_cap_is_enforced_while_streaming(pad_dataset: Path, tmp_path: Path):
    with PadServer(pad_dataset) as server:
        config = http_config(server, tmp_path, on_error="skip", max_skipped="90%")
        config = replace(config, transport=replace(config.transport, max_bytes=100_000))
        # every item fails: even under on_error: skip that is an error, never an empty layer
        with pytest.raises(FetchFailed, match=f"{N_CARDS} of {N_CARDS} items failed.*never built from nothing"):
            fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    failed = json.loads((tmp_path / "report.json").read_text())["failed"]
    assert len(failed) == N_CARDS and all("exceeds the size cap of 100000" in f["cause"] for f in failed)
    assert not (tmp_path / "raw" / "index.json").exists()


def test_pad_api_source_pages_through_cards(pad_dataset: Path, tmp_path: Path):
    with PadServer(pad_dataset) as server:
        for project in (1, None):
            source = SourceConfig(kind="pad_api", url=server.url + "api/v2", project=project, page_size=7)
            result = fetch_raw_layer(http_config(server, tmp_path, source=source), tmp_path / f"raw{project}", store_in(tmp_path / "store"))
            assert result.report.counts["without_md5"] == N_CARDS  # the API states no checksum: recorded
        pages = sorted(path for path in server.gets if path.startswith("/api/"))
    assert pages == sorted(f"/api/v2/{route}?skip={skip}&limit=7" for route in ("cards", "projects/1/cards")
                           for skip in (0, 7, 14))
    layer = Layer.open(tmp_path / "raw1")
    assert len(layer) == N_CARDS and set(layer.column("hashlib_md5")) == {""}
    assert set(layer.column("split")) <= {"dev", "test"}
    assert shard_bytes(tmp_path / "raw1") == shard_bytes(tmp_path / "rawNone")


def test_pad_api_refuses_a_card_outside_the_server(pad_dataset: Path, tmp_path: Path):
    with PadServer(pad_dataset) as server:
        cards = server.cards()
        cards[2]["processed_file_location"] = "/images/../../../etc/passwd"
        server.faults.bodies["/api/v2/cards"] = __import__("json").dumps(cards).encode()
        source = SourceConfig(kind="pad_api", url=server.url + "api/v2", page_size=100)
        with pytest.raises(SourceError, match=rf"PAD API card {cards[2]['id']}: unsafe processed_file_location"):
            fetch_raw_layer(http_config(server, tmp_path, source=source), tmp_path / "raw", store_in(tmp_path / "store"))


def test_offline_keeps_the_raw_layer_it_has(pad_dataset: Path, tmp_path: Path):
    with PadServer(pad_dataset) as server:
        config = http_config(server, tmp_path)
        with pytest.raises(FetchFailed, match="cannot reach 127.0.0.1:.*nothing to keep"):
            fetch_raw_layer(replace(config, source=SourceConfig(registries={"dev": "http://127.0.0.1:9/r.csv"})),
                            tmp_path / "x", store_in(tmp_path / "empty"))
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    before = shard_bytes(tmp_path / "raw") | {"index.json": (tmp_path / "raw/index.json").read_bytes()}
    for name in list((tmp_path / "raw").iterdir()):  # as `dvc repro` does before it runs the stage
        name.unlink()
    result = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))  # the server is gone: connection refused
    assert result.report.offline and "OFFLINE" in result.report.message and "cannot reach" in result.report.message
    assert shard_bytes(tmp_path / "raw") | {"index.json": (tmp_path / "raw/index.json").read_bytes()} == before


def test_offline_does_not_keep_a_layer_that_lowered_caps_or_other_checks_refuse(pad_dataset: Path, tmp_path: Path,
                                                                                  monkeypatch):
    # Kept with exit 0, the layer would pass for one fetched under the new cap or checks: DVC records the params
    # and code as applied, so the next online `dvc repro` would not fetch again. A fetch from nothing refuses them.
    import evalstack.fetch.raw_layer as raw_layer
    import evalstack.sources.images as images

    with PadServer(pad_dataset) as server:
        config = http_config(server, tmp_path)
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    before = shard_bytes(tmp_path / "raw")
    with pytest.raises(FetchFailed, match=r"OFFLINE: .*cannot reach.*holds \d+ items that fetch.max_pixels"):
        fetch_raw_layer(replace(config, max_pixels=1000), tmp_path / "raw", store_in(tmp_path / "store"))
    assert shard_bytes(tmp_path / "raw") == before  # the workspace keeps its layer, as after any failed fetch

    def no_pngs(data: bytes, max_pixels: int, what: str):  # new checks: PNG no longer accepted
        raise SourceError(f"{what}: PNG is no longer accepted")

    monkeypatch.setattr(images, "check_image", no_pngs)
    monkeypatch.setattr(raw_layer, "item_checks", lambda: {"code": {"evalstack.sources.images": "edited"}})
    with pytest.raises(FetchFailed, match=r"OFFLINE: .*holds \d+ items that .*the image checks"):
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    assert shard_bytes(tmp_path / "raw") == before


def test_a_download_another_checkout_took_meanwhile_is_downloaded_again(pad_dataset: Path, tmp_path: Path,
                                                                          monkeypatch):
    # Found with two checkouts fetching one source into one store.dir: the download area is shared (by rows whose
    # md5 the source states), and the one that finished first dropped the downloads it put in its layer while the
    # other still needed them. The fetch stopped ("its download vanished"); it now gets the image again.
    from evalstack.fetch.history import RawHistory

    load = RawHistory.load_download
    monkeypatch.setattr(RawHistory, "load_download",  # gone between its arrival and the shard that takes it
                        lambda self, row, check_md5=True: load(self, row) if check_md5 else None)
    with PadServer(pad_dataset) as server:
        result = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
        assert result.report.activity["downloaded_again"] == N_CARDS and server.image_gets() == 2 * N_CARDS
        monkeypatch.undo()
        plain = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "plain", store_in(tmp_path / "plain-s"))
    assert result.index.to_json() == plain.index.to_json()


def test_re_fetch_after_the_server_adds_5_percent_downloads_only_those(pad_dataset: Path, tmp_path: Path):
    with PadServer(pad_dataset) as server:
        config = http_config(server, tmp_path)
        first = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store")).index
        old = shard_bytes(tmp_path / "raw")
        for path in (tmp_path / "raw").iterdir():
            path.unlink()
        write_dataset(pad_dataset, n_cards=N_CARDS + 1, seed=0, start=N_CARDS, workers=1)  # +5%
        gets = server.image_gets()
        second = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
        assert server.image_gets() - gets == 1
    new = shard_bytes(tmp_path / "raw")
    last = sorted(old)[-1]
    assert {name: new[name] for name in old if name != last} == {name: old[name] for name in old if name != last}
    assert second.index.n_items == N_CARDS + 1 and second.report.activity["downloaded"] == 1
    activity = second.report.activity  # at most the last, partial shard is rewritten (from bytes it already had)
    assert activity["new_shard_items"] <= first.shards[-1].n_items + 1
    assert activity["kept_in_place"] + activity["new_shard_items"] == N_CARDS + 1
    # The grown layer is what a fetch of the same 21 cards from nothing gives (no history in it).
    with PadServer(pad_dataset) as server:
        fresh = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "fresh", store_in(tmp_path / "s2")).index
    assert shard_bytes(tmp_path / "fresh") == new and fresh.to_json() == second.index.to_json()


def test_a_source_that_goes_away_mid_fetch_stops_it_and_keeps_the_previous_layer(pad_dataset: Path, tmp_path: Path):
    rows = registry_rows(pad_dataset)
    with PadServer(pad_dataset) as server:
        config = http_config(server, tmp_path, on_error="skip", max_skipped="90%")
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
        before = shard_bytes(tmp_path / "raw")
        send_to_a_dead_host(pad_dataset, rows[-3:])  # their host is down: connection refused
        for path in (tmp_path / "raw").iterdir():
            path.unlink()
        with pytest.raises(FetchFailed, match=r"the source became unreachable: .*cannot reach 127.0.0.1:9"):
            fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    assert shard_bytes(tmp_path / "raw") == before and len(Layer.open(tmp_path / "raw")) == N_CARDS


def test_a_second_checkout_sharing_the_store_downloads_only_items_the_store_lacks(pad_dataset: Path, tmp_path: Path):
    """Issue 26 point 3: another clone (another path) with 10 % more cards fetches only the new cards; its
    layer equals a fetch of the same cards from nothing. The first checkout's layer is never put in its place."""
    store = tmp_path / "shared-store"
    with PadServer(pad_dataset) as server:
        fetch_raw_layer(http_config(server, tmp_path), tmp_path / "clone-a/raw", store_in(store))
        write_dataset(pad_dataset, n_cards=N_CARDS + 2, seed=0, start=N_CARDS, workers=1)  # +10 %
        gets = server.image_gets()
        second = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "clone-b/raw", store_in(store))
        assert server.image_gets() - gets == 2
        assert second.report.activity["downloaded"] == 2 and second.report.activity["removed"] == 0
        fresh = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "fresh", store_in(tmp_path / "s2")).index
    assert second.index.n_items == N_CARDS + 2
    assert shard_bytes(tmp_path / "clone-b/raw") == shard_bytes(tmp_path / "fresh")
    assert second.index.to_json() == fresh.to_json()
    # Offline, a third checkout has no layer of its own: another checkout's is not handed to it as "kept".
    offline = http_config(server, tmp_path, source=SourceConfig(registries={"dev": "http://127.0.0.1:9/r.csv"}))
    with pytest.raises(FetchFailed, match="nothing to keep"):
        fetch_raw_layer(offline, tmp_path / "clone-c/raw", store_in(store))
    assert not (tmp_path / "clone-c/raw/index.json").exists()


def test_a_checkout_with_fewer_items_than_another_is_not_told_it_lost_any(pad_dataset: Path, tmp_path: Path, capsys):
    store = tmp_path / "shared-store"
    with PadServer(pad_dataset) as server:
        fetch_raw_layer(http_config(server, tmp_path), tmp_path / "clone-a/raw", store_in(store))
        keep = {row["id"] for row in registry_rows(pad_dataset)[:5]}
        edit_registry(pad_dataset, lambda row: row if row["id"] in keep else None)
        gets = server.image_gets()
        small = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "clone-b/raw", store_in(store))
        assert server.image_gets() - gets == 0
    assert small.index.n_items == 5 and small.report.activity["removed"] == 0
    assert "WARNING" not in capsys.readouterr().out


def test_a_checkout_on_another_machine_fetches_only_what_the_object_store_lacks(pad_dataset: Path, tmp_path: Path,
                                                                               monkeypatch):
    """Issue 26 point 3 through `store.url`: two machines share nothing but the bucket (each its own store.dir).
    The second, with 10 % more cards, downloads only the new cards; raw shards come from the bucket."""
    from evalstack.cache.objectstore import ObjectStore, ObjectStoreConfig
    from evalstack.cache.shardstore import ShardStore, StoreConfig
    from tests.servers import moto_s3

    with moto_s3() as s3, PadServer(pad_dataset) as server:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

        def machine(name: str) -> ShardStore:
            remote = ObjectStore(ObjectStoreConfig(f"s3://{s3.bucket}/team", endpointurl=s3.url, retries=1))
            return ShardStore(StoreConfig(tmp_path / name / "store", 1 << 40), remote)

        fetch_raw_layer(http_config(server, tmp_path), tmp_path / "one/project/data/raw", machine("one"))
        write_dataset(pad_dataset, n_cards=N_CARDS + 2, seed=0, start=N_CARDS, workers=1)  # +10 %
        gets = server.image_gets()
        second_store = machine("two")
        second = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "two/project/data/raw", second_store)
        assert server.image_gets() - gets == 2
        assert second_store.remote.counters.requests_get > 0  # the old shards came from the bucket
        fresh = fetch_raw_layer(http_config(server, tmp_path), tmp_path / "fresh", store_in(tmp_path / "s2")).index
    assert shard_bytes(tmp_path / "two/project/data/raw") == shard_bytes(tmp_path / "fresh")
    assert second.index.to_json() == fresh.to_json()


def test_another_checkouts_bytes_are_reused_only_for_items_whose_md5_the_source_states(pad_dataset: Path,
                                                                                      tmp_path: Path):
    """The PAD API states no md5: a card identified by its URL alone may have changed at that URL since another
    checkout fetched it, so a second checkout downloads it again (its own earlier layer is trusted as before)."""
    store = tmp_path / "shared-store"
    with PadServer(pad_dataset) as server:
        config = http_config(server, tmp_path, source=SourceConfig(kind="pad_api", url=server.url + "api/v2"))
        fetch_raw_layer(config, tmp_path / "clone-a/raw", store_in(store))
        gets = server.image_gets()
        again = fetch_raw_layer(config, tmp_path / "clone-a/raw", store_in(store))
        assert server.image_gets() - gets == 0 and again.report.counts["without_md5"] == N_CARDS
        second = fetch_raw_layer(config, tmp_path / "clone-b/raw", store_in(store))
        assert server.image_gets() - gets == N_CARDS
    assert second.report.activity["downloaded"] == N_CARDS
    assert shard_bytes(tmp_path / "clone-b/raw") == shard_bytes(tmp_path / "clone-a/raw")


def _replace_image(dataset: Path, card: dict, other: dict) -> None:
    """The server's file for `card` replaced by `other`'s bytes, a minute newer (a card reprocessed)."""
    path = dataset / card["processed_file_location"].lstrip("/")
    mtime = path.stat().st_mtime
    path.write_bytes((dataset / other["processed_file_location"].lstrip("/")).read_bytes())
    os.utime(path, (mtime + 60, mtime + 60))


@pytest.mark.parametrize("validators", [True, False], ids=["etag and last-modified", "no validators"])
def test_an_image_replaced_at_the_same_url_is_fetched_again_as_a_fetch_from_nothing_gets_it(
        pad_dataset: Path, tmp_path: Path, validators: bool):
    """The PAD API states no md5, so a card is its id and URL. A server that replaced the image at that URL
    gave a fetch from nothing the new bytes while a re-fetch kept the old, exit 0 (found by a hunt: the
    README's `dvc repro -f fetch` and `download_and_cache(force_refresh=True)` did the same). Each kept card
    is asked with a HEAD now; a server that gives no validators has every card downloaded again."""
    with PadServer(pad_dataset, validators=validators) as server:
        config = http_config(server, tmp_path, source=SourceConfig(kind="pad_api", url=server.url + "api/v2"))
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
        gets = server.image_gets()
        unchanged = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
        assert server.image_gets() - gets == (0 if validators else N_CARDS)
        assert sum(server.heads.values()) == (N_CARDS if validators else 0)  # nothing recorded to ask with
        assert unchanged.report.activity["changed_or_unvalidated"] == (0 if validators else N_CARDS)
        cards = server.cards()
        _replace_image(pad_dataset, cards[3], cards[4])
        gets = server.image_gets()
        warm = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
        assert server.image_gets() - gets == (1 if validators else N_CARDS)
        fresh = fetch_raw_layer(config, tmp_path / "fresh", store_in(tmp_path / "fresh-store"))
    assert shard_bytes(tmp_path / "raw") == shard_bytes(tmp_path / "fresh")
    layer = Layer.open(tmp_path / "raw")
    keys = dict(zip((int(i) for i in layer.column("id")), (str(k) for k in layer.column("item_key"))))
    assert keys[cards[3]["id"]] == keys[cards[4]["id"]]  # the new bytes, not the old
    assert warm.report.counts == fresh.report.counts


def test_a_card_listed_again_after_its_image_changed_is_not_taken_from_the_download_area(pad_dataset: Path,
                                                                                        tmp_path: Path):
    """A card that leaves the listing keeps its bytes in the fetch history, so listing it again downloads
    nothing. Its image replaced meanwhile at the same URL, those bytes are stale: asked with a HEAD, they
    are dropped and the card downloaded (found by the same hunt)."""
    with PadServer(pad_dataset) as server:
        config = http_config(server, tmp_path, source=SourceConfig(kind="pad_api", url=server.url + "api/v2"))
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
        cards = server.cards()
        registry = next(p for p in pad_dataset.glob("metadata_*.csv") if f"\n{cards[1]['id']}," in p.read_text())
        full = registry.read_text()
        registry.write_text("".join(line for line in full.splitlines(True) if not line.startswith(f"{cards[1]['id']},")))
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))  # the card left: bytes kept aside
        _replace_image(pad_dataset, cards[1], cards[2])
        registry.write_text(full)
        gets = server.image_gets()
        warm = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
        assert server.image_gets() - gets == 1 and warm.report.activity["downloaded"] == 1
        fetch_raw_layer(config, tmp_path / "fresh", store_in(tmp_path / "fresh-store"))
    assert shard_bytes(tmp_path / "raw") == shard_bytes(tmp_path / "fresh")


def test_an_image_host_that_went_down_stops_the_revalidation_at_once_and_keeps_the_layer(pad_dataset: Path,
                                                                                        tmp_path: Path):
    """The API answers, the image host does not: the first HEAD that cannot connect ends the revalidation (one
    attempt each, no retries: a review measured 15 s a card with them), and the fetch stops as a download that
    cannot connect stops it, keeping the previous layer."""
    import time

    with PadServer(pad_dataset) as api:
        with PadServer(pad_dataset) as images:
            source = SourceConfig(kind="pad_api", url=api.url + "api/v2", image_root=images.url)
            config = http_config(api, tmp_path, source=source)
            fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
        before = shard_bytes(tmp_path / "raw")
        for path in (tmp_path / "raw").iterdir():
            path.unlink()
        started = time.monotonic()
        with pytest.raises(FetchFailed, match=r"the source became unreachable: .*cannot reach 127.0.0.1"):
            fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
        assert time.monotonic() - started < 10
    assert shard_bytes(tmp_path / "raw") == before


def test_a_damaged_validator_book_is_said_once_and_costs_only_downloads(pad_dataset: Path, tmp_path: Path, capfd):
    with PadServer(pad_dataset) as server:
        config = http_config(server, tmp_path, source=SourceConfig(kind="pad_api", url=server.url + "api/v2"))
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
        book = tmp_path / "store/fetch/validators.sqlite"
        book.write_bytes(b"not a database" * 100)
        capfd.readouterr()
        gets = server.image_gets()
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
        assert server.image_gets() - gets == N_CARDS
        assert capfd.readouterr().err.count(f"WARNING {book}: file is not a database") == 1
        gets = server.image_gets()
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))  # a new book, recorded again
        assert server.image_gets() - gets == 0
