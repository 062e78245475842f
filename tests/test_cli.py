import hashlib
import shutil
from pathlib import Path

import numpy as np

from evalstack.cli import main
from evalstack.core.keys import Key
from evalstack.core.layers import LayerWriter, shard_name
from tests.layers import ITEM_BYTES, Project, store_at


def _layer(directory: Path) -> Path:
    writer = LayerWriter(directory, "preprocessed", Key("pipeline", {"size": 4}))
    columns = {"item_key": np.asarray([b"a" * 64], dtype="S64"), "x": np.zeros((1, 4, 4, 3), np.uint8)}
    writer.add_shard(shard_name(0), columns, checksum_of=("x",))
    writer.stats = {"items_preprocessed": 1}
    writer.finish()
    return directory


def test_show_prints_kind_count_and_stats(tmp_path, capsys):
    assert main(["show", str(_layer(tmp_path / "l"))]) == 0
    out = capsys.readouterr().out
    assert "preprocessed layer" in out and "1 items" in out and "items_preprocessed: 1" in out


def test_verify_exit_code_tells_intact_from_corrupt(tmp_path, capsys):
    layer = _layer(tmp_path / "l")
    assert main(["verify", str(layer)]) == 0
    shard = layer / "00000.h5"
    data = bytearray(shard.read_bytes())
    data[100] ^= 1
    shard.write_bytes(bytes(data))
    assert main(["verify", str(layer)]) == 1
    assert f"CORRUPT {shard}" in capsys.readouterr().out


def test_missing_layer_is_exit_1_with_message(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope")]) == 1
    assert "not a finished layer" in capsys.readouterr().out


def _cli_project(tmp_path: Path) -> tuple[Project, list[str]]:
    (tmp_path / "params.yaml").write_text("store:\n  dir: store\n  max_bytes: 1000000000\n")
    return Project(tmp_path), ["--params", str(tmp_path / "params.yaml")]


def test_why_names_the_recomputed_shards_and_the_changed_key(tmp_path, capsys):
    project, params = _cli_project(tmp_path)
    store = store_at(tmp_path / "store")
    project.build(10, store)
    project.build(13, store)
    assert main([*params, "why", str(project.pred)]) == 0
    out = capsys.readouterr().out
    # Shards end where the items' identities say (10 items: 1, 4, 3, 2): the 3 new items fill up the
    # last, partial shard and start a new one; the shards before it keep their bytes.
    assert "5 shards: 2 computed (5 items), 3 reused from the store" in out
    assert "key unchanged since the previous build here" in out
    assert "computed 00003.h5: upstream shard changed (2 → 3 items)" in out
    assert "computed 00004.h5: new upstream shard (2 items)" in out and "00002" not in out
    project.preprocess(store, size=12)
    assert main([*params, "why", str(project.pre)]) == 0
    out = capsys.readouterr().out
    assert "key changed since the previous build here:\n    pipeline tiny: params.resize: 8 → 12" in out


def test_why_tells_a_restored_layer_from_a_built_one(tmp_path, capsys):
    project, params = _cli_project(tmp_path)
    store = store_at(tmp_path / "store")
    project.build(10, store)
    shutil.copytree(project.pre, tmp_path / "saved")
    project.preprocess(store, size=12)
    shutil.rmtree(project.pre)
    shutil.copytree(tmp_path / "saved", project.pre)  # what `dvc checkout` or the run-cache does
    assert main([*params, "why", str(project.pre)]) == 0
    assert "not the output of its last local build — DVC restored it" in capsys.readouterr().out


def test_provenance_of_an_item_goes_from_source_to_code(tmp_path, capsys):
    project, params = _cli_project(tmp_path)
    project.build(10, store_at(tmp_path / "store"))
    assert main([*params, "provenance", str(project.pred), "102"]) == 0
    out = capsys.readouterr().out
    source = (tmp_path / "source/images/102__901__lactose__50.png").read_bytes()
    assert "item 102__901__lactose__50.png (id 102, split dev)" in out
    assert f"md5 {hashlib.md5(source).hexdigest()}" in out and "images/102__901__lactose__50.png" in out
    assert f"item key (sha256 of the image bytes) {hashlib.sha256(source).hexdigest()}" in out
    assert "pipeline  " in out and "crop_resize {" in out and "modules); key " in out and "data/preprocessed/tiny/00001.h5 row 1" in out
    assert "model     " in out and "numpy weights sha256" in out and "predicted " in out
    assert "code      evalstack 0.1.0" in out
    assert main([*params, "provenance", str(project.pre)]) == 0
    assert f"shard_bytes {3 * ITEM_BYTES}" in capsys.readouterr().out
    assert main([*params, "provenance", str(project.pred), "999"]) == 2


def test_gc_command_trims_to_the_limit(tmp_path, capsys):
    project, params = _cli_project(tmp_path)
    store = store_at(tmp_path / "store")
    project.build(10, store)
    project.preprocess(store, size=12)  # the size-8 shards are now only in the store
    assert main([*params, "gc", "--max-bytes", "0"]) == 0
    out = capsys.readouterr().out
    assert "removed 4 shards" in out  # size-8 preprocessed; predictions in the workspace stay and "the store stays above its limit" in out
    assert project.preprocess(store, size=12).counts["shards_reused"] == 4  # the workspace's shards were kept
    assert project.preprocess(store, size=8).counts["shards_computed"] == 4
