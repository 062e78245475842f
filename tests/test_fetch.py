import csv
import hashlib
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from evalstack.core.layers import Layer
from evalstack.core.raw import read_blobs
from evalstack.fetch.raw_layer import FetchConfig, FetchFailed, fetch_raw_layer
from evalstack.sources.catalog import SourceConfig
from evalstack.sources.registry import REGISTRY_COLUMNS, SourceError
from tests.conftest import png_bytes, store_in


def make_registry(root: Path, n: int = 5, corrupt_id: int | None = None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"{100 + i}__{900 + i // 2}__lactose__50.png"
        data = png_bytes(40, 30, seed=i)
        (root / "images" / name).write_bytes(data)
        md5 = hashlib.md5(data).hexdigest()
        if corrupt_id == 100 + i:
            md5 = "0" * 32
        rows.append([100 + i, 900 + i // 2, "lactose", 50, "Galaxy S9", f"images/{name}", md5, name])
    registry = root / "metadata_dev.csv"
    with open(registry, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REGISTRY_COLUMNS)
        writer.writerows(reversed(rows))  # arrival order is by id, not by row order
    return registry


def local_config(registry: Path, tmp_path: Path, **changes) -> FetchConfig:
    config = FetchConfig(SourceConfig(registries={"dev": str(registry)}), shard_bytes=2 * 3698)
    return replace(config, **changes)


def test_fetch_builds_sharded_raw_layer_in_id_order(tmp_path: Path):
    registry = make_registry(tmp_path / "src")
    index = fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store")).index
    assert len(index.shards) > 1 and sum(s.n_items for s in index.shards) == 5
    layer = Layer.open(tmp_path / "raw", kind="raw")
    assert list(layer.column("id")) == [100, 101, 102, 103, 104]
    assert set(layer.column("split")) == {"dev"}
    shard, row = _locate(layer, 2)
    with layer.open_shard(shard) as handle:
        blob = read_blobs(handle, slice(row, row + 1))[0]
    assert blob == (tmp_path / "src/images/102__901__lactose__50.png").read_bytes()
    # The item key is the sha256 of the bytes, not anything the source says.
    assert layer.item_keys()[2] == hashlib.sha256(blob).hexdigest()


def _locate(layer: Layer, position: int):
    """(shard, row) of the item at `position` in layer order."""
    for shard in layer.shards:
        if position < shard.n_items:
            return shard, position
        position -= shard.n_items
    raise IndexError(position)


def test_fetch_twice_gives_byte_identical_shards(tmp_path: Path):
    registry = make_registry(tmp_path / "src")
    first = fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "a", store_in(tmp_path / "s1")).index
    second = fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "b", store_in(tmp_path / "s2")).index
    assert [s.sha256 for s in first.shards] == [s.sha256 for s in second.shards]
    assert (tmp_path / "a/index.json").read_bytes() == (tmp_path / "b/index.json").read_bytes()


def test_md5_mismatch_names_the_item_and_leaves_no_layer(tmp_path: Path):
    registry = make_registry(tmp_path / "src", corrupt_id=103)
    with pytest.raises(FetchFailed, match=r"id 103 \(103__901__lactose__50.png\): md5"):
        fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    assert not (tmp_path / "raw/index.json").exists()


def test_missing_image_is_named(tmp_path: Path):
    registry = make_registry(tmp_path / "src")
    (tmp_path / "src/images/101__900__lactose__50.png").unlink()
    with pytest.raises(FetchFailed, match="id 101 .*file not found: .*101__900__lactose__50.png"):
        fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))


def test_skip_policy_builds_the_layer_without_failed_items_and_reports_them(tmp_path: Path):
    registry = make_registry(tmp_path / "src", corrupt_id=103)
    result = fetch_raw_layer(local_config(registry, tmp_path, on_error="skip", max_skipped="90%", report=tmp_path / "r.json"), tmp_path / "raw", store_in(tmp_path / "store"))
    assert list(Layer.open(tmp_path / "raw").column("id")) == [100, 101, 102, 104]
    assert [(f.id, f.cause.split(" ")[0]) for f in result.report.failed] == [(103, "md5")]
    assert '"id": 103' in (tmp_path / "r.json").read_text()


def test_disallowed_scheme_is_refused(tmp_path: Path):
    config = FetchConfig(SourceConfig(registries={"dev": "ftp://127.0.0.1/r.csv"}))
    with pytest.raises(SourceError, match="scheme 'ftp' is not allowed"):
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))


def test_a_removed_item_rewrites_only_its_shard_and_its_bytes_are_kept(tmp_path: Path, capsys):
    registry = make_registry(tmp_path / "src", n=12)
    config = local_config(registry, tmp_path, shard_bytes=3 * 3698)
    first = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store")).index
    before = {s.sha256 for s in first.shards}
    lines = registry.read_text().splitlines()
    registry.write_text("\n".join(line for line in lines if not line.startswith("105,")) + "\n")
    result = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    layer = Layer.open(tmp_path / "raw")
    assert 105 not in set(layer.column("id")) and len(layer) == 11
    rewritten = [s for s in layer.shards if s.sha256 not in before]
    assert len(rewritten) == 1 and result.report.activity["new_shard_items"] == rewritten[0].n_items
    assert result.report.activity["removed"] == 1 and result.report.activity["downloaded"] == 0
    # The same 11 items fetched from nothing give the same layer: it does not remember the removal.
    fresh = fetch_raw_layer(config, tmp_path / "fresh", store_in(tmp_path / "s2")).index
    assert fresh.to_json() == layer.index.to_json()
    # Listed again, the removed card's bytes come from the fetch history, not the source.
    registry.write_text("\n".join(lines) + "\n")
    (tmp_path / "src/images/105__902__lactose__50.png").unlink()
    again = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    assert again.report.activity["downloaded"] == 0 and again.index.to_json() == first.to_json()


def test_changed_labels_rewrite_only_the_items_shard_without_downloading(tmp_path: Path):
    registry = make_registry(tmp_path / "src", n=12)
    config = local_config(registry, tmp_path, shard_bytes=3 * 3698)
    first = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store")).index
    registry.write_text(registry.read_text().replace("101,900,lactose", "101,900,blank"))
    result = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    layer = Layer.open(tmp_path / "raw")
    assert dict(zip(layer.column("id"), layer.column("sample_name")))[101] == "blank"
    changed = [new.name for old, new in zip(first.shards, layer.shards) if old.sha256 != new.sha256]
    assert changed == [_locate(layer, 1)[0].name] and len(first.shards) == len(layer.shards)
    assert result.report.activity["downloaded"] == 0
    assert result.report.activity["bytes_from_old_shards"] == result.report.activity["new_shard_items"]


def test_an_empty_listing_never_replaces_the_raw_layer(tmp_path: Path):
    registry = make_registry(tmp_path / "src")
    fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    header = registry.read_text().splitlines()[0]
    registry.write_text(header + "\n")
    for path in (tmp_path / "raw").iterdir():  # as `dvc repro` does before it runs the stage
        path.unlink()
    with pytest.raises(FetchFailed, match=r"the source lists no items \(.*metadata_dev.csv.*\).*left as it was"):
        fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == before


def test_a_listing_that_shrank_a_lot_is_said_loudly(tmp_path: Path, capsys):
    registry = make_registry(tmp_path / "src", n=10)
    fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    lines = registry.read_text().splitlines()
    registry.write_text("\n".join(lines[:4]) + "\n")  # 3 of 10 cards left
    result = fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    out = capsys.readouterr().out
    assert "WARNING the source lists 3 items where the last raw layer had 10 (7 removed" in out
    assert "fetch.shrink_warning" in result.report.message and len(Layer.open(tmp_path / "raw")) == 3


def test_folder_source_with_labels_csv(tmp_path: Path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"card{i}.png").write_bytes(png_bytes(40, 30, seed=i))
    (folder / "labels.csv").write_text(
        "id,image_name,sample_name,split\n1,card0.png,lactose,dev\n2,card1.png,blank,test\n3,card2.png,lactose,dev\n")
    config = FetchConfig(SourceConfig(kind="folder", folder=str(folder)))
    fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    layer = Layer.open(tmp_path / "raw")
    assert list(layer.column("split")) == ["dev", "test", "dev"]
    assert layer.column("hashlib_md5")[1] == hashlib.md5((folder / "card1.png").read_bytes()).hexdigest()


def test_folder_labels_cannot_escape_the_folder(tmp_path: Path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "labels.csv").write_text("id,image_name,sample_name\n7,../secret.png,lactose\n")
    config = FetchConfig(SourceConfig(kind="folder", folder=str(folder)))
    with pytest.raises(SourceError, match=r"id '7'.*unsafe image_name '../secret.png'"):
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))


def test_the_older_registries_param_is_refused_naming_where_it_goes():
    # The fetch stage tracks fetch.source, not fetch.registries: with `source:` left empty, an edit of the older
    # spelling (dev and test swapped) reran nothing and the old raw layer was scored (found by an audit).
    with pytest.raises(SourceError, match=r"fetch.registries is the older spelling of a registry source; move it to "
                                          r"fetch.source: \{kind: registry, registries: \{'dev': 'a.csv'\}\}"):
        SourceConfig.from_params({"source": None, "registries": {"dev": "a.csv"}, "shard_bytes": 4})
    with pytest.raises(SourceError, match="kind 'gopher' unknown"):
        SourceConfig.from_params({"source": {"kind": "gopher"}})


def test_an_ftp_image_url_in_a_local_registry_is_refused(tmp_path: Path):
    registry = make_registry(tmp_path / "src")
    registry.write_text(registry.read_text().replace("images/102__901", "ftp://127.0.0.1/102__901"))
    # refused while listing, before anything is read or matched against the last layer
    with pytest.raises(SourceError, match=r"id 102 .*URL scheme 'ftp' refused \(fetch.schemes allows"):
        fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    assert not (tmp_path / "raw").exists()


def test_without_a_store_the_layer_in_place_is_still_reused(tmp_path: Path):
    registry = make_registry(tmp_path / "src")
    fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store=None)
    again = fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store=None)
    assert (again.report.activity["kept_in_place"], again.report.activity["downloaded"]) == (5, 0)
    assert len(Layer.open(tmp_path / "raw")) == 5


def test_a_bad_registry_after_a_good_fetch_keeps_the_layer_in_place(tmp_path: Path):
    registry = make_registry(tmp_path / "src")
    fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    for path in (tmp_path / "raw").iterdir():  # as `dvc repro` does before it runs the stage
        path.unlink()
    registry.write_text(registry.read_text() + "105,902,lactose,50,Galaxy S9,images/x.png,zz,x.png\n")
    with pytest.raises(SourceError, match="id '105'.*not an md5"):
        fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == before


def test_params_yaml_fetch_block_becomes_a_fetch_config():
    import yaml

    from evalstack.fetch.raw_layer import fetch_config

    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params["fetch"]["http"]["retries"] = 2
    config = fetch_config(params, report=Path("data/fetch_report.json"))
    assert config.source.kind == "registry" and set(config.source.registries) == {"dev", "test"}
    assert (config.transport.retries, config.on_error, config.report) == (2, "fail", Path("data/fetch_report.json"))
    other = fetch_config({"fetch": {"source": {"kind": "registry", "registries": {"dev": "a.csv"}}, "shard_bytes": 4,
                                    "max_pixels": 100}})
    assert other.source.kind == "registry" and other.transport.schemes == ("file", "http", "https")


def test_a_duplicate_id_across_registries_is_refused_naming_it(tmp_path: Path):
    registry = make_registry(tmp_path / "src")
    second = tmp_path / "src/metadata_test.csv"
    second.write_text(registry.read_text())  # every id again, in another split
    config = FetchConfig(SourceConfig(registries={"dev": str(registry), "test": str(second)}))
    with pytest.raises(SourceError, match=r"duplicate id 10\d in registry dev \(.*\) and in registry test \(.*\) "
                                          r"\(images 10\d__90\d__lactose__50.png and 10\d__90\d__lactose__50.png\)"):
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    assert not (tmp_path / "raw").exists()


def test_local_images_are_read_where_they_are_not_copied_to_the_download_area(tmp_path: Path):
    registry = make_registry(tmp_path / "src", n=6)
    result = fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    activity = result.report.activity
    assert (activity["downloaded"], activity["read_from_source"], activity["from_download_area"]) == (6, 6, 0)
    assert not list((tmp_path / "store/fetch").glob("downloads/*"))


def test_the_listing_is_kept_on_disk_not_in_memory(tmp_path: Path):
    """Registry rows as Python objects cost ~450 bytes each (22 MB for 50,000, measured with these rows); fetch
    streams them through SQLite instead."""
    import tracemalloc

    from evalstack.fetch.listing import Listing
    from evalstack.sources.registry import RegistryRow

    def rows(n: int):
        for i in range(n, 0, -1):  # any order in, id order out
            yield RegistryRow(i, i // 4, "lactose", 50, "Galaxy S9", f"images/{i}.png", f"{i:032x}", f"{i}.png",
                              "dev", f"file:///r/images/{i}.png")

    with Listing(tmp_path / "work") as listing:
        tracemalloc.start()
        listing.add_rows(rows(50_000))
        ids = [item.row.id for item in listing.before_arrivals() if item.row.id % 5000 == 0]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(listing) == 50_000 and ids == list(range(5000, 50_001, 5000))
        assert listing.count_needing_bytes() == 50_000
    assert peak < 6 * 2**20, f"{peak / 2**20:.1f} MB of Python objects for 50,000 rows"  # as a list: 22 MB
    assert not list((tmp_path / "work").iterdir())  # the scratch database is gone


# -- trust round 2, item 4: on_error: skip never shrinks a layer silently ----------------------------
def test_skip_refuses_to_replace_a_layer_when_every_item_fails_and_keeps_the_previous_one(tmp_path: Path):
    registry = make_registry(tmp_path / "src", n=2)
    config = local_config(registry, tmp_path, on_error="skip", report=tmp_path / "r.json")
    fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    before = (tmp_path / "raw" / "index.json").read_bytes()
    # the registry now states other md5s for both cards: each is fetched again and fails its md5 check
    text = registry.read_text()
    for row in list(csv.reader(text.splitlines()))[1:]:
        text = text.replace(row[6], "0" * 32)
    registry.write_text(text)
    with pytest.raises(FetchFailed, match=r"2 of 2 items failed, more than on_error: skip may leave out "
                                          r"\(fetch.max_skipped '10%': at most 0; a layer is never built from nothing\)"
                                          r".*kept the previous raw layer \(2 items\)"):
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    assert (tmp_path / "raw" / "index.json").read_bytes() == before
    assert '"id": 100' in (tmp_path / "r.json").read_text()  # the skipped ids and their causes are on file


@pytest.mark.parametrize("limit, passes", [(3, True), (2, False), ("30%", True), ("20%", False)])
def test_max_skipped_is_a_count_or_a_share_of_the_listing(tmp_path: Path, limit, passes: bool):
    registry = make_registry(tmp_path / "src", n=10)
    for path in sorted((tmp_path / "src" / "images").iterdir())[:3]:
        path.unlink()
    config = local_config(registry, tmp_path, on_error="skip", max_skipped=limit)
    if passes:
        assert len(fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store")).index.shards) >= 1
    else:
        with pytest.raises(FetchFailed, match=rf"3 of 10 items failed, more than on_error: skip may leave out "
                                              rf"\(fetch.max_skipped {limit!r}: at most 2\)"):
            fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))


@pytest.mark.parametrize("bad", ["100%", "-1%", "many", -1, True])
def test_a_bad_max_skipped_is_named(tmp_path: Path, bad):
    with pytest.raises(SourceError, match=r"fetch.max_skipped"):
        local_config(make_registry(tmp_path / "src", n=1), tmp_path, max_skipped=bad)


def test_the_report_lists_the_ids_skip_left_out(tmp_path: Path):
    import json

    from evalstack.reporting.provenance import source_lines
    from evalstack.reporting.results import ProfileResults

    registry = make_registry(tmp_path / "src", n=10)
    for path in sorted((tmp_path / "src" / "images").iterdir())[:1]:
        path.unlink()
    report = tmp_path / "data" / "fetch_report.json"
    config = local_config(registry, tmp_path, on_error="skip", report=report)
    fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    assert json.loads(report.read_text())["failed"][0]["id"] == 100
    lines = source_lines(ProfileResults("classification", tmp_path, {"fetch": {}}, [], "test"))
    assert any(line.startswith("Skipped (on_error: skip, all listed in data/fetch_report.json): id 100 (")
               for line in lines), lines


def test_a_row_neither_fetched_nor_reported_failed_stops_fetch_instead_of_leaving_the_layer(tmp_path: Path,
                                                                                          monkeypatch):
    """The safety net under every download path (threads here, Dask workers): an item that lost its arrival
    without a failure is an error, never a layer quietly one item short with an exit 0."""
    import evalstack.fetch.raw_layer as raw_layer

    registry = make_registry(tmp_path, n=5)
    real = raw_layer.download_items

    def dropping(rows, total, transport, history, max_pixels, workers, record):
        return real(rows, total, transport, history, max_pixels, workers,
                    lambda arrivals: record([a for a in arrivals if a[0] != 102]))

    monkeypatch.setattr(raw_layer, "download_items", dropping)
    with pytest.raises(FetchFailed, match=r"id 102.*neither fetched nor reported as failed"):
        fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store"))
    assert not (tmp_path / "raw/index.json").exists()


def test_a_local_image_that_changes_after_its_check_stops_fetch_naming_it(tmp_path: Path, monkeypatch):
    """A local image is read again for its shard: other bytes than the ones checked stop the fetch (its
    md5 is not checked twice; the sha256 of what is read is compared with the checked bytes' key)."""
    import evalstack.fetch.raw_layer as raw_layer

    registry = make_registry(tmp_path / "src", n=6)
    config = local_config(registry, tmp_path)
    fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    first = (tmp_path / "raw/index.json").read_bytes()
    image = tmp_path / "src/images/104__902__lactose__50.png"
    old_md5, replaced = hashlib.md5(image.read_bytes()).hexdigest(), png_bytes(40, 30, seed=98)
    image.write_bytes(replaced)  # the card replaced at the source, its md5 too: fetched again, and checked
    registry.write_text(registry.read_text().replace(old_md5, hashlib.md5(replaced).hexdigest()))
    real = raw_layer.download_items

    def then_changed(rows, total, transport, history, max_pixels, workers, record):
        def changed_on_arrival(arrivals):
            if any(arrival[0] == 104 for arrival in arrivals):
                image.write_bytes(png_bytes(40, 30, seed=99))  # after its check, before its shard
            record(arrivals)
        return real(rows, total, transport, history, max_pixels, workers, changed_on_arrival)

    monkeypatch.setattr(raw_layer, "download_items", then_changed)
    with pytest.raises(FetchFailed, match=r"id 104 .*bytes changed while fetching .*104__902__lactose__50.png"):
        fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    assert (tmp_path / "raw/index.json").read_bytes() == first  # the last raw layer, as it was


def _staged_shards(out_dir: Path) -> int:
    return len(list(out_dir.parent.glob(f".{out_dir.name}.staging-*/*.h5")))


def test_shards_are_written_while_the_downloads_go_on_and_in_any_arrival_order_the_layer_is_the_same(
        tmp_path: Path, monkeypatch):
    """Fetch writes each shard as soon as every item before its end has arrived, instead of in a second pass
    after the last download. The order the downloads finish in never shapes the layer: arrivals held back and
    recorded at the end in reverse order give byte-identical shards and index."""
    import evalstack.fetch.raw_layer as raw_layer

    registry = make_registry(tmp_path / "src", n=60)
    config = local_config(registry, tmp_path, workers=1)
    real = raw_layer.download_items
    staged_when_recorded: list[int] = []
    with _watching_staging(tmp_path / "streamed", staged_when_recorded):
        streamed = fetch_raw_layer(config, tmp_path / "streamed", store_in(tmp_path / "store-a")).index
    assert len(streamed.shards) >= 10 and len(staged_when_recorded) == 4  # 60 rows: runs of 16
    # the writer thread had written shards before the last run arrived (it was waited for: see _watching_staging)
    assert staged_when_recorded[0] == 0 and staged_when_recorded[-1] >= 1

    def held_back(rows, total, transport, history, max_pixels, workers, record):
        arrivals: list = []
        outcome = real(rows, total, transport, history, max_pixels, workers, arrivals.extend)
        assert _staged_shards(tmp_path / "held") == 0  # nothing arrived in order: nothing written yet
        for arrival in reversed(arrivals):
            record([arrival])
        return outcome

    monkeypatch.setattr(raw_layer, "download_items", held_back)
    held = fetch_raw_layer(config, tmp_path / "held", store_in(tmp_path / "store-b")).index
    assert held.to_json() == streamed.to_json()
    for shard in streamed.shards:
        assert (tmp_path / "held" / shard.name).read_bytes() == (tmp_path / "streamed" / shard.name).read_bytes()


def test_a_fetch_that_stops_after_shards_were_written_leaves_none_of_them(tmp_path: Path):
    """Under on_error: fail, a failure near the end comes after most shards were written: they were staged,
    never published, and go; the last raw layer stays as it was."""
    registry = make_registry(tmp_path / "src", n=40)
    config = local_config(registry, tmp_path, workers=1)
    first = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store")).index
    text = registry.read_text()
    for i in range(40):  # every card replaced at the source (new bytes, new md5); the last one's md5 wrong
        image = tmp_path / f"src/images/{100 + i}__{900 + i // 2}__lactose__50.png"
        old_md5, new = hashlib.md5(image.read_bytes()).hexdigest(), png_bytes(40, 30, seed=1000 + i)
        image.write_bytes(new)
        text = text.replace(old_md5, "0" * 32 if i == 39 else hashlib.md5(new).hexdigest())
    registry.write_text(text)
    staged: list[int] = []
    with pytest.raises(FetchFailed, match=r"id 139 .*md5"):
        with _watching_staging(tmp_path / "raw", staged):
            fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    assert max(staged) >= 5  # shards of this run were written before the failure was known
    assert not list(tmp_path.glob(".raw.staging-*"))
    assert Layer.open(tmp_path / "raw").index.to_json() == first.to_json()
    staged.clear()
    with pytest.raises(FetchFailed, match=r"id 139 .*md5"):  # and with no earlier layer to put back
        with _watching_staging(tmp_path / "fresh", staged):
            fetch_raw_layer(config, tmp_path / "fresh", store_in(tmp_path / "store"))
    assert max(staged) >= 5 and not list(tmp_path.glob(".fresh.staging-*")) and not (tmp_path / "fresh").exists()


@contextmanager
def _watching_staging(out_dir: Path, counts: list[int]):
    """Count the staged shards each time download_items records arrivals. Shards are written by a thread of
    their own: from the second run on, the count is taken once one shard is there, or after 10 s (a fetch that
    wrote no shard before the downloads ended shows 0 then)."""
    import evalstack.fetch.raw_layer as raw_layer

    real = raw_layer.download_items

    def watched(rows, total, transport, history, max_pixels, workers, record):
        def counting(arrivals):
            deadline = time.monotonic() + 10
            while counts and _staged_shards(out_dir) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            counts.append(_staged_shards(out_dir))
            record(arrivals)
        return real(rows, total, transport, history, max_pixels, workers, counting)

    raw_layer.download_items = watched
    try:
        yield
    finally:
        raw_layer.download_items = real


def test_the_raw_shards_fetch_wrote_are_stamped_so_the_first_reader_does_not_hash_them_before_starting(
        tmp_path: Path, monkeypatch):
    """Fetch knows the sha256 of every shard it wrote or placed (it hashed the bytes it wrote), and remembers it
    in the store's hash stamps, as a derived stage does for its outputs: `check_shard` then takes it from the
    stamp. A shard changed since (another stat) is hashed again: the stamp is no longer trusted."""
    import evalstack.core.hashstamps as hashstamps

    store = store_in(tmp_path / "store")
    index = fetch_raw_layer(local_config(make_registry(tmp_path / "src", n=12), tmp_path), tmp_path / "raw", store).index
    layer = Layer.open(tmp_path / "raw")

    def no_read(path):
        raise AssertionError(f"{path} was hashed again")

    with monkeypatch.context() as patched:
        patched.setattr(hashstamps, "sha256_file", no_read)
        for shard in index.shards:
            layer.check_shard(shard, store.stamps.sha256)
    damaged = tmp_path / "raw" / index.shards[0].name
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    with pytest.raises(Exception, match="does not match the sha256"):
        layer.check_shard(index.shards[0], store.stamps.sha256)


def test_downloads_without_a_stated_md5_wait_for_their_own_output_only(tmp_path: Path):
    """A download area shared by checkouts (one store.dir) hands over a waiting download only when the source
    stated its md5: bytes known by URL alone may be older than what that URL serves to another checkout."""
    from evalstack.fetch.history import RawHistory
    from evalstack.sources.registry import RegistryRow

    store = store_in(tmp_path / "store")
    with_md5 = RegistryRow(1, 1, "x", 0, "", "http://h/1.png", "0" * 32, "1.png", "dev")
    by_url = RegistryRow(2, 2, "x", 0, "", "http://h/2.png", "", "2.png", "dev")
    mine, theirs = RawHistory(store, tmp_path / "a/raw"), RawHistory(store, tmp_path / "b/raw")
    assert mine.download_path(with_md5) == theirs.download_path(with_md5)
    assert mine.download_path(by_url) != theirs.download_path(by_url)
    mine.save_download(by_url, b"old bytes")
    assert mine.has_download(by_url) and not theirs.has_download(by_url)
    assert RawHistory(store, tmp_path / "a/raw").load_download(by_url) == b"old bytes"  # its own resume still works


def _registry_with_one_large_card(root: Path, n: int = 8, large_id: int = 103) -> Path:
    """`make_registry`'s cards, with card `large_id` 80×60 (4,800 pixels, ~14 KB) where the others are 40×30."""
    registry = make_registry(root, n=n)
    name = f"{large_id}__{900 + (large_id - 100) // 2}__lactose__50.png"
    data = png_bytes(80, 60, seed=large_id)
    (root / "images" / name).write_bytes(data)
    lines = [line if not line.startswith(f"{large_id},") else
             ",".join([*line.split(",")[:6], hashlib.md5(data).hexdigest(), line.split(",")[7]])
             for line in registry.read_text().splitlines()]
    registry.write_text("\n".join(lines) + "\n")
    return registry


_LOWERED_CAPS = {"max_pixels": {"max_pixels": 2_000}, "max_bytes": {"transport": {"max_bytes": 8_000}}}


def _lowered(config: FetchConfig, cap: str) -> FetchConfig:
    from evalstack.sources.transport import TransportConfig

    change = dict(_LOWERED_CAPS[cap])
    if "transport" in change:
        change["transport"] = TransportConfig(**change["transport"])
    return replace(config, **change)


def _failures(report: Path) -> list[tuple[int, str]]:
    import json

    return [(entry["id"], entry["cause"]) for entry in json.loads(report.read_text())["failed"]]


@pytest.mark.parametrize("cap", sorted(_LOWERED_CAPS))
@pytest.mark.parametrize("on_error", ["skip", "fail"])
def test_a_lowered_cap_applies_to_kept_items_as_in_a_fetch_from_nothing(tmp_path: Path, cap: str, on_error: str):
    """Lowering `fetch.max_pixels` or `fetch.max_bytes` reruns fetch (both are its params). An item fetched
    under the old cap and kept from the last layer must then fail, or be skipped, exactly as a fetch from
    nothing under the new cap does (the same layer, the same report), not stay in the layer with exit 0."""
    registry = _registry_with_one_large_card(tmp_path / "src")
    config = local_config(registry, tmp_path, shard_bytes=3 * 3698, on_error=on_error, max_skipped=1)
    warm = tmp_path / "warm"
    first = fetch_raw_layer(replace(config, report=warm / "report.json"), warm / "raw", store_in(warm / "store"))
    assert 103 in set(Layer.open(warm / "raw").column("id")) and first.report.failed == []
    lowered = _lowered(config, cap)
    outcomes = {}
    for name in ("warm", "scratch"):
        where = tmp_path / name
        try:
            result = fetch_raw_layer(replace(lowered, report=where / "report.json"), where / "raw",
                                     store_in(where / "store"))
            outcomes[name] = ("built", result.index.to_json())
        except FetchFailed as error:
            outcomes[name] = ("stopped", [line for line in str(error).splitlines() if line.startswith("  id ")])
        outcomes[name] += (_failures(where / "report.json"),)
    assert outcomes["warm"] == outcomes["scratch"]
    kind, _, failed = outcomes["warm"]
    assert [id_ for id_, _ in failed] == [103] and kind == ("built" if on_error == "skip" else "stopped")
    assert ("exceeds the cap of 2000" if cap == "max_pixels" else "8000") in failed[0][1]
    if on_error == "fail":  # the last layer stays in place, as after any failed fetch
        assert Layer.open(warm / "raw").index.to_json() == first.index.to_json()


def test_a_lowered_cap_applies_to_an_item_waiting_in_the_download_area(tmp_path: Path):
    """Bytes kept in the fetch history (a removed item, listed again) were checked under the caps of the run
    that got them: listed again under a lower cap, the item fails as a fresh download would."""
    registry = _registry_with_one_large_card(tmp_path / "src")
    config = local_config(registry, tmp_path, shard_bytes=3 * 3698, on_error="skip", max_skipped=1)
    store = tmp_path / "store"
    fetch_raw_layer(config, tmp_path / "raw", store_in(store))
    lines = registry.read_text().splitlines()
    registry.write_text("\n".join(line for line in lines if not line.startswith("103,")) + "\n")
    assert fetch_raw_layer(config, tmp_path / "raw", store_in(store)).report.activity["removed"] == 1
    registry.write_text("\n".join(lines) + "\n")
    again = fetch_raw_layer(_lowered(config, "max_pixels"), tmp_path / "raw", store_in(store))
    assert [(f.id, "exceeds the cap of 2000" in f.cause) for f in again.report.failed] == [(103, True)]
    scratch = fetch_raw_layer(_lowered(config, "max_pixels"), tmp_path / "scratch", store_in(tmp_path / "s2"))
    assert again.index.to_json() == scratch.index.to_json()


def test_unchanged_caps_open_no_kept_image_and_a_layer_without_pixel_counts_is_still_capped(tmp_path: Path,
                                                                                           monkeypatch):
    """Raw shards record each image's pixel count (a column their sha256 covers), so a re-fetch checks kept
    items against the caps without opening them. A layer written before that column existed has its
    images' headers read, so a lowered cap applies to it too."""
    import evalstack.core.raw as raw
    import evalstack.fetch.plan as plan
    import evalstack.fetch.shard_stream as shard_stream

    registry = _registry_with_one_large_card(tmp_path / "src")
    config = local_config(registry, tmp_path, shard_bytes=3 * 3698, on_error="skip", max_skipped=1)
    fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    layer = Layer.open(tmp_path / "raw")
    assert dict(zip(layer.column("id"), layer.column("pixels"))) == {i: 4_800 if i == 103 else 1_200
                                                                   for i in range(100, 108)}
    opened = []
    monkeypatch.setattr(plan, "image_pixels", lambda data: opened.append(len(data)))
    assert fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store")).report.failed == []
    assert opened == []
    monkeypatch.undo()

    def without_pixels(items):  # the shard format before pixel counts were recorded
        columns, options = raw.raw_shard(items)
        del columns["pixels"]
        return columns, options

    monkeypatch.setattr(shard_stream, "raw_shard", without_pixels)
    fetch_raw_layer(config, tmp_path / "older", store_in(tmp_path / "older-store"))
    monkeypatch.undo()
    again = fetch_raw_layer(_lowered(config, "max_pixels"), tmp_path / "older", store_in(tmp_path / "older-store"))
    scratch = fetch_raw_layer(_lowered(config, "max_pixels"), tmp_path / "scratch", store_in(tmp_path / "s2"))
    assert [f.id for f in again.report.failed] == [103] and again.index.to_json() == scratch.index.to_json()


def test_an_item_removed_while_the_cap_is_lowered_still_counts_as_removed(tmp_path: Path):
    # Found in review: forgetting a previous item above the new cap also forgot that the listing had dropped it,
    # so its bytes were not kept in the fetch history and the removal went unreported.
    registry = _registry_with_one_large_card(tmp_path / "src")
    config = local_config(registry, tmp_path, shard_bytes=3 * 3698)
    fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    lines = registry.read_text().splitlines()
    registry.write_text("\n".join(line for line in lines if not line.startswith("103,")) + "\n")
    result = fetch_raw_layer(_lowered(config, "max_pixels"), tmp_path / "raw", store_in(tmp_path / "store"))
    assert result.report.activity["removed"] == 1 and result.report.activity["checked_again"] == 0
    large = (tmp_path / "src/images/103__901__lactose__50.png").read_bytes()
    kept = [p for p in (tmp_path / "store/fetch/downloads").iterdir() if p.read_bytes() == large]
    assert kept, "the removed item's bytes were not kept in the fetch history"


def test_other_image_checks_check_every_kept_image_again_as_a_fresh_fetch_would(tmp_path: Path, monkeypatch):
    """The raw index records what checked its images (the checks' code, Pillow's version). Under other checks
    a re-fetch checks every kept image again in full, so an image today's checks refuse fails as it would in
    a fetch from nothing, not stay in the layer because an older check let it in."""
    import evalstack.fetch.downloads as downloads
    import evalstack.fetch.plan as plan
    import evalstack.fetch.raw_layer as raw_layer
    import evalstack.sources.images as images
    from evalstack.sources.images import check_image

    # the checks and their error, not the registry parser (an edit there would check every image again)
    assert set(plan.item_checks()["code"]) == {"evalstack", "evalstack.sources", "evalstack.sources.images",
                                               "evalstack.sources.errors"}
    registry = _registry_with_one_large_card(tmp_path / "src")
    config = local_config(registry, tmp_path, shard_bytes=3 * 3698, on_error="skip", max_skipped=1)
    first = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store")).index
    assert first.stats["images_checked_by"] == plan.item_checks()

    def stricter(data: bytes, max_pixels: int, what: str):  # a new rule: nothing wider than 50 pixels
        width, height = check_image(data, max_pixels, what)
        if width > 50:
            raise SourceError(f"{what}: {width} pixels wide, more than 50")
        return width, height

    for module in (images, downloads):  # the checks kept images go through, and a download's
        monkeypatch.setattr(module, "check_image", stricter)
    same_record = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    assert same_record.report.failed == []  # the checks recorded are today's: nothing is opened again
    monkeypatch.setattr(raw_layer, "item_checks", lambda: {"code": {"evalstack.sources.images": "edited"}})
    again = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    scratch = fetch_raw_layer(config, tmp_path / "scratch", store_in(tmp_path / "s2"))
    assert [(f.id, f.cause) for f in again.report.failed] == [(f.id, f.cause) for f in scratch.report.failed]
    assert [f.id for f in again.report.failed] == [103] and again.index.to_json() == scratch.index.to_json()


def test_the_raw_shard_format_comes_from_the_module_the_raw_key_covers(tmp_path: Path, monkeypatch):
    """A previous raw shard is reused whenever the raw key and its rows are unchanged, and the key's code part
    is `evalstack.core.raw` alone (a wider one would rewrite every raw shard, and so recompute every layer,
    after any edit to fetch). So every choice that shapes a shard file must come from there: here a changed
    format in `core.raw.raw_shard` reaches the file, and nothing else is passed to it."""
    import h5py

    import evalstack.core.raw as raw
    import evalstack.fetch.raw_layer as raw_layer
    import evalstack.fetch.shard_stream as shard_stream

    registry = make_registry(tmp_path / "src")
    assert "evalstack.core.raw" in local_config(registry, tmp_path).layer_key().parts["code"]
    assert shard_stream.raw_shard is raw.raw_shard and shard_stream.RAW_COMPRESSION is raw.RAW_COMPRESSION
    assert raw_layer.RAW_COMPRESSION is raw.RAW_COMPRESSION  # the previous layer restored (_restore)

    def marked(items):
        columns, options = raw.raw_shard(items)
        return columns, {**options, "attrs": {"format": "marked"}}

    monkeypatch.setattr(shard_stream, "raw_shard", marked)
    index = fetch_raw_layer(local_config(registry, tmp_path), tmp_path / "raw", store_in(tmp_path / "store")).index
    for shard in index.shards:
        with h5py.File(tmp_path / "raw" / shard.name, "r") as handle:
            assert handle.attrs["format"] == "marked"


_KILLED_FETCH = """
import os, signal, sys
from pathlib import Path
from evalstack.fetch.history import RawHistory
from evalstack.fetch.listing import Listing
from tests.conftest import store_in
history = RawHistory(store_in(Path(sys.argv[1])), Path(sys.argv[2]))
previous = history.previous(Path(sys.argv[2]), "raw")
listing = Listing(history.work_directory())
print(len(previous.shard_paths), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # as a kill -9 mid-fetch: nothing is cleaned up
"""


def _age(paths, seconds: float = 7200) -> None:
    import os
    import time

    for path in paths:
        os.utime(path, (time.time() - seconds,) * 2)


def test_a_fetch_sharing_the_store_never_removes_another_fetchs_stash_or_listing(tmp_path: Path):
    """Two checkouts share one store.dir. One fetch's end, or its sweep of a killed fetch's leftovers,
    must leave another fetch's stash (its previous layer's bytes, kept while the new layer is written
    over them) and its listing database alone, however long that fetch has been running."""
    import subprocess
    import sys

    from evalstack.fetch.history import RawHistory
    from evalstack.fetch.listing import Listing

    registry = make_registry(tmp_path / "src")
    for checkout in ("a", "b"):  # layers whose shards are not in the store: fetch stashes them
        fetch_raw_layer(local_config(registry, tmp_path), tmp_path / checkout, store=None)
    store = store_in(tmp_path / "store")
    running = RawHistory(store, tmp_path / "a")
    stashed = running.previous(tmp_path / "a", "raw").shard_paths
    listing = Listing(running.work_directory())
    assert stashed and all(path.exists() for path in stashed.values())
    _age([listing.path, *stashed.values(), *{path.parent for path in stashed.values()}])  # a long fetch

    with RawHistory(store_in(tmp_path / "store"), tmp_path / "b") as other:  # the other checkout's fetch
        other.clear_stale_temp_files()
        assert all(path.exists() for path in stashed.values()), "another fetch's sweep removed this fetch's stash"
        assert listing.path.exists(), "another fetch's sweep removed this fetch's listing database"
        its_own = other.previous(tmp_path / "b", "raw").shard_paths
        assert its_own and not set(its_own.values()) & set(stashed.values())
    assert not any(path.exists() for path in its_own.values())
    assert all(path.exists() for path in stashed.values()), "another fetch's end removed this fetch's stash"
    assert listing.add_rows([]) == 0

    listing.close()
    running.close()
    assert not listing.path.exists() and not any(path.exists() for path in stashed.values())

    # A fetch killed with -9 leaves both behind; once old, the next fetch's sweep takes them.
    killed = subprocess.run([sys.executable, "-c", _KILLED_FETCH, str(tmp_path / "store"), str(tmp_path / "a")],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert killed.returncode == -9 and int(killed.stdout) > 0, killed.stderr
    work, stash = running.work_directory(), running.directory / "stash"
    leftovers = [*work.iterdir(), *stash.iterdir(), *stash.glob("*/*")]
    assert any(path.name.endswith(".sqlite") for path in leftovers) and any(path.suffix == ".h5" for path in leftovers)
    with RawHistory(store_in(tmp_path / "store"), tmp_path / "b") as other:
        other.clear_stale_temp_files()
    assert [*work.iterdir(), *stash.iterdir()] != [], "a killed fetch's leftovers went before they were old"
    _age(leftovers)
    with RawHistory(store_in(tmp_path / "store"), tmp_path / "b") as other:
        other.clear_stale_temp_files()
    assert [*work.iterdir(), *stash.iterdir()] == []


def test_a_planted_mark_never_blocks_or_breaks_a_sweep(tmp_path: Path):
    """A FIFO planted where a mark goes (store.dir is shared) holds no lock: the sweep does not hang
    opening it, and takes it and what it claims to mark; a held mark keeps its file."""
    import os

    from evalstack.fetch.livemarks import LiveMark, is_live, sweep_unmarked

    (tmp_path / "listing-fifo.sqlite").write_bytes(b"")
    os.mkfifo(tmp_path / "listing-fifo.sqlite.live")
    (tmp_path / "listing-dead.sqlite").write_bytes(b"")
    held = LiveMark(tmp_path / "listing-held.sqlite")
    (tmp_path / "listing-held.sqlite").write_bytes(b"")
    _age(tmp_path.iterdir())
    assert [is_live(tmp_path / f"listing-{n}.sqlite") for n in ("fifo", "dead", "held")] == [False, False, True]
    assert sweep_unmarked(tmp_path, "listing-*.sqlite") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["listing-held.sqlite", "listing-held.sqlite.live"]
    held.release()
    assert not is_live(tmp_path / "listing-held.sqlite")


def test_each_metadata_field_changed_rewrites_only_that_items_shard_and_an_equal_value_rewrites_nothing(tmp_path: Path):
    """The listing compares each kept row's metadata with the previous layer's field by field (in SQL): a change
    to any one field must reach the layer, and a registry text that parses to the same values must not."""
    registry = make_registry(tmp_path / "src", n=8)
    config = local_config(registry, tmp_path, shard_bytes=3698)  # one card a shard
    first = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store")).index
    assert len(first.shards) == 8
    rows = list(csv.reader(registry.read_text().splitlines()))
    header, body = rows[0], {int(row[0]): row for row in rows[1:]}

    def write(changes: dict[int, tuple[str, str]]) -> None:
        edited = {i: list(row) for i, row in body.items()}
        for card, (column, value) in changes.items():
            edited[card][header.index(column)] = value
        with open(registry, "w", newline="") as handle:
            csv.writer(handle).writerows([header, *edited.values()])

    # "050" and "50.0" parse to the quantity 50 the layer holds: the same metadata, nothing rewritten
    write({101: ("quantity", "050"), 102: ("quantity", "50.0")})
    same = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    assert same.index.to_json() == first.to_json() and same.report.activity["new_shard_items"] == 0
    # one field changed on each of six cards (the md5, part of an item's identity, is left to the removal tests)
    changes = {100: ("sample_id", "950"), 101: ("sample_name", "blank"), 102: ("quantity", "20"),
               103: ("camera_type_1", "Pixel 3"), 104: ("url", "images/the-same-bytes.png"),
               105: ("image_name", "renamed.png")}
    (tmp_path / "src/images/the-same-bytes.png").write_bytes((tmp_path / "src/images/104__902__lactose__50.png").read_bytes())
    write(changes)
    result = fetch_raw_layer(config, tmp_path / "raw", store_in(tmp_path / "store"))
    layer = Layer.open(tmp_path / "raw")
    rewritten = {int(layer.column("id")[n]) for n, (old, new) in enumerate(zip(first.shards, layer.shards))
                 if old.sha256 != new.sha256}
    assert rewritten == set(changes) and result.report.activity["downloaded"] == 0
    assert list(layer.column("camera_type_1"))[3] == "Pixel 3" and list(layer.column("quantity"))[2] == 20
    # ... and the layer is what a fetch from nothing of the edited registry gives
    fresh = fetch_raw_layer(config, tmp_path / "fresh", store_in(tmp_path / "s2")).index
    assert fresh.to_json() == layer.index.to_json()
