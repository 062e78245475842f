"""Untrusted layers, shards, registries and images: every name is checked before a path is built,
every read is capped, and nothing is ever written outside the project, its outputs and the store.

These are issue 15's security findings 1, 3, 4, 5 and 15 (the README's "Bad input catalogue"
names the test of each row).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from PIL import Image

from evalstack.cache.shardstore import SHARD_KEY_ATTR, ShardStoreError, StoreEntry
from evalstack.core.keys import sha256_file
from evalstack.core.layers import INDEX_NAME, StoreError
from evalstack.fetch.raw_layer import FetchConfig, fetch_raw_layer
from evalstack.sources.catalog import SourceConfig, list_items
from evalstack.sources.coco import CocoFetchConfig, fetch_coco_layer
from evalstack.sources.images import check_image
from evalstack.sources.registry import REGISTRY_COLUMNS, SourceError, parse_registry
from evalstack.sources.transport import Transport, TransportConfig
from tests.coco_fixture import IMAGES, document, write_coco
from tests.conftest import png_bytes
from tests.layers import Project, store_at
from tests.test_fetch import make_registry

REPO = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------------
def edit_index(layer_dir: Path, edit) -> None:
    """Apply `edit(shards)` to the shard list of a layer's index.json (what a crafted pull would ship)."""
    path = layer_dir / INDEX_NAME
    data = json.loads(path.read_text())
    edit(data["shards"])
    path.write_text(json.dumps(data))


def set_shard_attr(layer_dir: Path, name: str, attr: str, value: str) -> None:
    """Change one attribute of a shard and restate its sha256 in the index, as a crafted layer would."""
    path = layer_dir / name
    path.chmod(0o644)
    with h5py.File(path, "r+") as handle:
        handle.attrs[attr] = value
    digest = sha256_file(path)
    edit_index(layer_dir, lambda shards: [s.update(sha256=digest) for s in shards if s["name"] == name])


def files_under(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """Every file under `root` (but not under `skip`) with its size and mtime."""
    found = {}
    for path in root.rglob("*"):
        if any(path == s or s in path.parents for s in skip):
            continue
        if path.is_file() or path.is_symlink():
            status = path.lstat()
            found[str(path.relative_to(root))] = (status.st_size, status.st_mtime_ns)
    return found


def registry_with(root: Path, rows: list[dict]) -> Path:
    """A registry CSV with the given rows (other columns filled with valid values)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "metadata_dev.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, REGISTRY_COLUMNS)
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({"id": 100 + i, "sample_id": 1, "sample_name": "lactose", "quantity": 50,
                             "camera_type_1": "x", "hashlib_md5": "0" * 32, "image_name": f"img{i}.png", **row})
    return path


def built_project(tmp_path: Path) -> tuple[Project, Path]:
    project = Project(tmp_path / "project")
    store = tmp_path / "store"
    project.build(6, store_at(store))
    return project, store


# -- finding 1: shard names from index.json ----------------------------------------------------
def test_a_shard_name_with_dotdot_in_a_pulled_index_is_refused_and_nothing_is_written_outside(tmp_path: Path):
    project, store = built_project(tmp_path)
    shutil.rmtree(project.pre)
    # A crafted raw layer: its index calls the first shard "../x.h5", and ships that file beside the layer.
    shutil.copy(project.raw / "00000.h5", project.raw.parent / "x.h5")
    edit_index(project.raw, lambda shards: shards[0].update(name="../x.h5"))
    with pytest.raises(StoreError, match=r"data/raw/index.json: shard name '\.\./x\.h5' is not a plain shard file name"):
        project.preprocess(store_at(store))
    assert not (project.root / "data/preprocessed/x.h5").exists()  # where the old code wrote it
    assert not project.pre.exists() or not list(project.pre.parent.glob("*.h5"))


def test_an_absolute_shard_name_in_a_pulled_index_is_refused(tmp_path: Path):
    project, store = built_project(tmp_path)
    canary = tmp_path / "canary"
    canary.mkdir()
    target = canary / "evil.h5"
    shutil.copy(project.raw / "00000.h5", target)
    before = target.read_bytes()
    edit_index(project.raw, lambda shards: shards[0].update(name=str(target)))
    with pytest.raises(StoreError, match=rf"index.json: shard name '{target}' is not a plain shard file name"):
        project.preprocess(store_at(store))
    assert target.read_bytes() == before and sorted(canary.iterdir()) == [target]


def test_a_crafted_digest_in_an_index_is_refused_before_it_names_a_store_file(tmp_path: Path):
    project, _ = built_project(tmp_path)
    edit_index(project.pre, lambda shards: shards[0].update(sha256="../../../../x"))
    with pytest.raises(StoreError, match=r"sha256 of shard 00000.h5 '\.\./\.\./\.\./\.\./x' is not a sha256"):
        project.infer(None)


# -- finding 1: shard-store addresses from a shard's own attribute -----------------------------
def test_a_crafted_shard_key_attribute_cannot_seed_the_store_outside_itself(tmp_path: Path):
    project, _ = built_project(tmp_path)
    canary = tmp_path / "canary"
    canary.mkdir()
    fresh_store = tmp_path / "fresh-store"
    fresh_store.mkdir()
    # Seeding joins <store>/shards/<address[:2]>/<address>.h5: this address lands in the canary folder.
    address = os.path.relpath(canary / "evil", fresh_store)
    assert address.startswith("..")
    set_shard_attr(project.pre, "00000.h5", SHARD_KEY_ATTR, address)
    # A fresh clone's first stage run seeds the store from the layer it finds in place.
    with pytest.raises(ShardStoreError, match=rf"00000.h5: its {SHARD_KEY_ATTR} attribute '{address}' is not a sha256"):
        project.preprocess(store_at(fresh_store))
    assert list(canary.iterdir()) == []


def test_a_store_record_naming_another_address_is_no_entry_and_gc_never_deletes_outside(tmp_path: Path):
    store = store_at(tmp_path / "store", max_bytes=0)
    victim = tmp_path / "victim.h5"
    victim.write_bytes(b"precious")
    address = "ab" * 32
    shard = store.shard_path(address)
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"x")
    crafted = StoreEntry(os.path.relpath(tmp_path / "victim", tmp_path / "store"), "0" * 64, 1, 1, "raw")
    store.record_path(address).write_text(json.dumps(crafted.__dict__))
    assert store.get(address) is None and list(store.entries()) == []
    store.gc(set())
    assert victim.read_bytes() == b"precious"


def test_a_crafted_md5_in_dvc_lock_is_refused_before_it_names_a_file(tmp_path: Path):
    from evalstack.cache.dvcfiles import LockedOut, locked_layer

    (tmp_path / ".dvc/cache").mkdir(parents=True)
    out = LockedOut("fetch", "data/raw", "../../../../etc/passwd.dir")
    with pytest.raises(StoreError, match=r"'\.\./\.\./\.\./\.\./etc/passwd\.dir' is not an md5"):
        locked_layer(tmp_path, out)


# -- finding 5: registry URLs -----------------------------------------------------------------
@pytest.mark.parametrize("url, message", [
    ("/etc/passwd", "an absolute path would leave the source's directory"),
    ("//other-host/x.png", r"a network-path reference \('//host/…'\) would leave the source's host"),
    ("\\\\other-host\\x.png", "network-path reference"),
    ("images/../../x.png", "'..' would leave the source's directory"),
    ("%2e%2e/x.png", "'..' would leave"),
])
def test_registry_urls_that_leave_the_registrys_place_are_refused(tmp_path: Path, url: str, message: str):
    registry = registry_with(tmp_path, [{"url": url}])
    with pytest.raises(SourceError, match=rf"metadata_dev.csv line 2 \(id '100'\): unsafe url .*{message}"):
        parse_registry(registry.read_text(), "dev", registry.as_uri())


def test_an_absolute_path_in_a_local_registry_never_reads_that_file(tmp_path: Path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not yours")
    registry = registry_with(tmp_path / "reg", [{"url": str(secret)}])
    config = FetchConfig(SourceConfig(registries={"dev": str(registry)}), shard_bytes=2 * 3698, on_error="skip")
    with pytest.raises(SourceError, match=f"unsafe url '{secret}'"):
        fetch_raw_layer(config, tmp_path / "raw", store_at(tmp_path / "store"))
    assert not (tmp_path / "raw" / INDEX_NAME).exists()


def test_full_urls_in_a_registry_still_work(tmp_path: Path):
    registry = registry_with(tmp_path, [{"url": "https://pad.example.org/images/a.png"}])
    rows = parse_registry(registry.read_text(), "dev", "https://pad.example.org/registry/metadata_dev.csv")
    assert rows[0].resolved_url == "https://pad.example.org/images/a.png"


# -- finding 15: duplicate ids across split registries ----------------------------------------
def test_a_duplicate_id_across_two_registries_names_both(tmp_path: Path):
    dev = make_registry(tmp_path / "dev", n=2)
    test = make_registry(tmp_path / "test", n=3)  # ids 100–102 again
    config = SourceConfig(registries={"dev": str(dev), "test": str(test)})
    with Transport(TransportConfig()) as transport:
        with pytest.raises(SourceError) as raised:
            list_items(config, transport)
    message = str(raised.value)
    assert re.match(r"duplicate id 10[01] in registry dev \(", message), message
    assert dev.as_uri() in message and test.as_uri() in message and "and in registry test (" in message


# -- finding 3: every read is capped while reading ---------------------------------------------
_LIMITED = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))  # an uncapped read dies here, not the machine
sys.path.insert(0, {src!r}); sys.path.insert(0, {repo!r})  # the evalstack this test process runs
started = time.monotonic()
try:
{body}
except Exception as error:
    print(type(error).__name__, error)
print("seconds", round(time.monotonic() - started, 1))
"""


def run_limited(body: str, tmp_path: Path) -> str:
    """Run `body` in a child with a 2 GiB address-space limit; what it printed."""
    import evalstack

    src = str(Path(evalstack.__file__).resolve().parents[1])
    code = _LIMITED.format(src=src, repo=str(REPO), body="\n".join("    " + l for l in body.splitlines()))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return done.stdout + done.stderr


def test_a_registry_pointing_at_dev_zero_fails_fast_at_the_size_cap(tmp_path: Path):
    out = run_limited(
        "from evalstack.sources.transport import Transport, TransportConfig\n"
        "Transport(TransportConfig(max_bytes=1 << 20)).get('file:///dev/zero', 'item id 7 (zero.png)')", tmp_path)
    assert "SourceError item id 7 (zero.png): more than 1048576 bytes (the size cap): /dev/zero" in out, out
    assert "MemoryError" not in out


def test_a_local_coco_image_that_never_ends_fails_at_the_cap(tmp_path: Path):
    split = write_coco(tmp_path / "src")
    os.symlink("/dev/zero", Path(split.images) / "zero.png")
    doc = document(images=[*IMAGES, {"id": 9, "file_name": "zero.png", "width": 8, "height": 8}])
    Path(split.annotations).write_text(json.dumps(doc))
    body = ("from evalstack.sources.coco import CocoFetchConfig, CocoSplit, fetch_coco_layer\n"
            f"fetch_coco_layer(CocoFetchConfig({{'val': CocoSplit({split.annotations!r}, {split.images!r})}}), 'b')")
    out = run_limited(body, tmp_path)
    assert f"zero.png: more than {64 << 20} bytes (the size cap)" in out, out  # the default cap
    assert "MemoryError" not in out


def test_a_local_coco_annotations_file_is_capped(tmp_path: Path):
    split = write_coco(tmp_path / "src")
    huge = tmp_path / "src/annotations/huge.json"
    os.symlink("/dev/zero", huge)
    body = ("from evalstack.sources.coco import CocoFetchConfig, CocoSplit, fetch_coco_layer\n"
            f"fetch_coco_layer(CocoFetchConfig({{'val': CocoSplit({str(huge)!r}, {split.images!r})}}, "
            "max_annotation_bytes=16 << 20), 'a')")
    out = run_limited(body, tmp_path)
    assert f"SourceError /dev/zero: more than {16 << 20} bytes (the size cap)" in out, out  # the link, resolved


def test_the_md5_of_a_folder_image_is_read_under_the_cap(tmp_path: Path):
    folder = tmp_path / "cards"
    folder.mkdir()
    with open(folder / "huge.png", "wb") as handle:  # 4 GiB that take no disk (sparse)
        handle.truncate(4 << 30)
    (folder / "ok.png").write_bytes(Image.new("RGB", (4, 4)).tobytes())
    (folder / "labels.csv").write_text("id,image_name,sample_name\n1,huge.png,lactose\n2,ok.png,lactose\n")
    body = ("from evalstack.sources.catalog import SourceConfig, list_items\n"
            "from evalstack.sources.transport import Transport, TransportConfig\n"
            f"rows = list_items(SourceConfig(kind='folder', folder={str(folder)!r}), Transport(TransportConfig(max_bytes=1 << 20)))\n"
            "print([(r.id, r.hashlib_md5) for r in rows])")
    out = run_limited(body, tmp_path)
    assert "[(1, ''), (2, '" in out, out  # too big to hash: no md5, and its download fails at the cap
    assert "MemoryError" not in out


# -- finding 4: only the formats a source accepts are decoded ----------------------------------
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


def test_eps_bytes_never_reach_pillows_eps_plugin(monkeypatch):
    from PIL import EpsImagePlugin

    opened = []
    original = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1) or original(self))
    assert Image.open(io.BytesIO(EPS)).format == "EPS" and opened == [1]  # Pillow would take it
    opened.clear()
    with pytest.raises(SourceError, match=r"item id 7: not a decodable image in an accepted format \(PNG, JPEG"):
        check_image(EPS, 1 << 20, "item id 7")
    assert opened == []  # the EPS loader (which calls Ghostscript) was never asked


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP", "WEBP"])
def test_the_accepted_formats_decode(fmt: str):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (10, 20, 30)).save(buffer, format=fmt)
    assert check_image(buffer.getvalue(), 1 << 20, "item") == (16, 8)


# -- acceptance: nothing written outside the project, its outputs and store.dir -----------------
def test_crafted_layers_and_registries_write_nothing_outside_the_project_and_store(tmp_path: Path):
    project, store_dir = built_project(tmp_path)
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "victim.h5").write_bytes(b"precious")
    fresh_store = tmp_path / "fresh-store"
    fresh_store.mkdir()
    guarded = (project.root, store_dir, fresh_store)
    before = files_under(tmp_path, guarded)
    refused: list[str] = []

    def attempt(name: str, run) -> None:
        try:
            run()
        except (StoreError, ShardStoreError, SourceError) as error:
            refused.append(f"{name}: {error}")

    def crafted(layer: Path, edit) -> None:
        shutil.copytree(layer, layer.with_name(layer.name + ".good"), dirs_exist_ok=True)
        edit_index(layer, edit)

    def restore(layer: Path) -> None:
        shutil.rmtree(layer)
        layer.with_name(layer.name + ".good").rename(layer)

    # Shard names in a raw, a preprocessed layer and a previous raw layer fetch continues from.
    for layer, stage in ((project.raw, lambda: project.preprocess(store_at(store_dir))),
                         (project.pre, lambda: project.infer(store_at(store_dir))),
                         (project.raw, lambda: project.fetch(store_at(fresh_store)))):
        for name in ("../x.h5", "../../x.h5", str(canary / "victim.h5"), "sub/../../x.h5", ".x.h5", "index.json"):
            crafted(layer, lambda shards: shards[0].update(name=name))
            attempt(f"{layer.name} shard {name}", stage)
            restore(layer)
    # A store address in a shard's own attribute, seeded automatically by the next stage.
    for address in (os.path.relpath(canary / "victim", fresh_store), "../../x", str(canary / "evil")):
        shutil.copytree(project.pre, tmp_path / "pre.good", dirs_exist_ok=True)
        set_shard_attr(project.pre, "00000.h5", SHARD_KEY_ATTR, address)
        attempt(f"shard_key {address}", lambda: project.preprocess(store_at(fresh_store)))
        shutil.rmtree(project.pre)
        (tmp_path / "pre.good").rename(project.pre)
    # Registries whose rows point outside their folder or host.
    outside = canary / "victim.h5"
    for url in (str(outside), "//127.0.0.2/x.png", f"images/../../{outside.name}", "../canary/victim.h5"):
        registry = registry_with(project.root / "source", [{"url": url}])
        config = FetchConfig(SourceConfig(registries={"dev": str(registry)}), shard_bytes=2 * 3698, on_error="skip")
        attempt(f"registry url {url}", lambda: fetch_raw_layer(config, project.root / "data/raw2", store_at(store_dir)))
    # COCO file names.
    for file_name in ("../../../canary/victim.h5", str(outside), "a/../../x.png"):
        split = write_coco(project.root / "coco")
        doc = document()
        doc["images"][0]["file_name"] = file_name
        Path(split.annotations).write_text(json.dumps(doc))
        attempt(f"coco file_name {file_name}", lambda: fetch_coco_layer(CocoFetchConfig({"val": split}), project.root / "data/coco"))
    # A store record that names another address; gc trims to nothing.
    record = store_at(store_dir).record_path("cd" * 32)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(StoreEntry(os.path.relpath(canary / "victim", store_dir), "0" * 64, 1, 1, "raw").__dict__))
    store_at(store_dir, max_bytes=0).gc(set())

    # Refused: 6 names × (preprocess, infer), 3 shard_keys, 4 registry urls, 3 COCO names. Fetch reads nothing
    # from a crafted layer in its output folder: it cannot open it as a layer, so it fetches the layer anew.
    assert len(refused) == 2 * 6 + 3 + 4 + 3, "\n".join(refused)
    assert files_under(tmp_path, guarded) == before
    assert (canary / "victim.h5").read_bytes() == b"precious"


# -- finding 7: a remote Dask scheduler over plain tcp:// ----------------------------------------
@pytest.mark.parametrize("address, warned", [
    ("tcp://10.1.2.3:8786", True), ("sched.example.org:8786", True),
    ("tcp://127.0.0.1:8786", False), ("tcp://localhost:8786", False), ("tls://sched.example.org:8786", False),
])
def test_a_plain_tcp_scheduler_on_another_host_warns_and_names_tls(monkeypatch, capsys, address: str, warned: bool):
    import distributed

    from evalstack.cache.executors import DaskExecutor, open_executor

    class FakeClient:  # no scheduler is contacted: only what is said before connecting matters
        def __init__(self, address):
            self.address = address

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(distributed, "Client", FakeClient)
    with open_executor({"executor": "dask", "dask": {"address": address}}) as executor:
        assert isinstance(executor, DaskExecutor) and executor.client.address == address
    err = capsys.readouterr().err
    assert (f"WARNING dask.address {address} is plain TCP to another machine: tasks and results travel as "
            "pickles" in err) == warned
    assert ("Use tls:// with certificates" in err) == warned


def test_a_remote_registry_may_not_name_files_on_this_machine(tmp_path: Path):
    from tests.loopback import Faults, PadServer

    registry = registry_with(tmp_path / "served", [{"url": "file:///etc/passwd"}])
    with PadServer(tmp_path / "served", Faults()) as server:
        config = SourceConfig(registries={"dev": f"{server.url}metadata_dev.csv"})
        with Transport(TransportConfig()) as transport, pytest.raises(
                SourceError, match=r"item id 100 \(img0.png\): URL scheme 'file' refused: a remote registry .* may "
                                   r"only point at http\(s\) images, not file:///etc/passwd"):
            list_items(config, transport)
    assert registry.exists()


# -- trust round 2, item 5: a local registry reads only its own folder and the roots listed ---------
def test_a_file_url_in_a_local_registry_outside_its_folder_is_refused(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "card.png").write_bytes(png_bytes(40, 30, seed=1))
    registry = registry_with(tmp_path / "reg", [{"url": "file:///etc/passwd"}])
    config = FetchConfig(SourceConfig(registries={"dev": str(registry)}), on_error="skip")
    with pytest.raises(SourceError, match=r"item id 100 \(img0.png\): file:///etc/passwd is outside the registry's "
                                          r"folder .*reg\) and fetch.source.roots \(\[\]\); a local registry reads"):
        fetch_raw_layer(config, tmp_path / "raw", store_at(tmp_path / "store"))
    assert not (tmp_path / "raw" / INDEX_NAME).exists()
    # A folder listed under fetch.source.roots may be read (the md5 is checked as always).
    data = (elsewhere / "card.png").read_bytes()
    registry_with(tmp_path / "reg", [{"url": (elsewhere / "card.png").as_uri(),
                                      "hashlib_md5": hashlib.md5(data).hexdigest()}])
    allowed = FetchConfig(SourceConfig(registries={"dev": str(registry)}, roots=(str(elsewhere),)))
    fetch_raw_layer(allowed, tmp_path / "raw", store_at(tmp_path / "store"))
    assert (tmp_path / "raw" / INDEX_NAME).exists()


def test_a_refused_scheme_is_refused_even_when_the_item_is_already_in_the_last_layer(tmp_path: Path):
    registry = make_registry(tmp_path / "src", n=2)
    config = FetchConfig(SourceConfig(registries={"dev": str(registry)}))
    fetch_raw_layer(config, tmp_path / "raw", store_at(tmp_path / "store"))
    before = (tmp_path / "raw" / INDEX_NAME).read_bytes()
    # Same id, same md5, but now an ftp:// URL: its bytes are in the layer, so nothing would ever read the URL.
    text = registry.read_text().replace("images/100__", "ftp://files.example.org/100__")
    registry.write_text(text)
    with pytest.raises(SourceError, match=r"item id 100 .*URL scheme 'ftp' refused \(fetch.schemes allows "
                                          r"file, http, https\): ftp://files.example.org/100__"):
        fetch_raw_layer(config, tmp_path / "raw", store_at(tmp_path / "store"))
    assert (tmp_path / "raw" / INDEX_NAME).read_bytes() == before


# -- trust round 2, item 10: an output path from params stays inside the project -------------------
@pytest.mark.parametrize("stage", ["export_onnx.py", "train.py", "fit_pls.py", "detection/train.py"])
@pytest.mark.parametrize("out", ["../../outside/victim.txt", "models/escape/victim.txt"])
def test_an_output_named_in_params_outside_the_project_is_refused_before_anything_is_written(
        tmp_path: Path, stage: str, out: str):
    project = tmp_path / "a" / "project"
    (project / ".dvc").mkdir(parents=True)
    (project / "models").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("precious")
    (project / "models" / "escape").symlink_to(outside)  # a folder inside that leads out
    result = subprocess.run([sys.executable, str(REPO / "stages" / stage), "--out", out, "--source", "m.pt2",
                             "--name", "x", "--model", "x", "--raw", "r", "--preprocessed", "p", "--features", "f"],
                            cwd=project, capture_output=True, text=True)
    assert result.returncode == 2
    assert f"argument --out: output '{out}' resolves to {victim}, outside the project {project}" in result.stderr
    assert "Traceback" not in result.stderr
    assert victim.read_text() == "precious"


def test_an_output_inside_the_project_is_accepted(tmp_path: Path):
    from evalstack.core.names import project_output

    (tmp_path / ".dvc").mkdir()
    (tmp_path / "models").mkdir()
    assert project_output("models/m.onnx", tmp_path) == Path("models/m.onnx")
