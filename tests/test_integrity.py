"""`verify`: a damaged shard is named, and so is the damaged item inside it."""
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from evalstack.cli import main
from evalstack.cli.verify import verify_layer
from evalstack.core.layers import Layer, LayerCorruptError, read_item_count
from evalstack.preprocess.pipelines import preprocess_layer
from tests.layers import Project, store_at, tiny_pipeline


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def _row_offset(path: Path, dataset: str, row: int) -> int:
    """A byte in the middle of one item's data: its chunk when compressed, its rows when contiguous."""
    with h5py.File(path, "r") as handle:
        data = handle[dataset]
        if data.chunks is None:
            row_bytes = data.dtype.itemsize * int(np.prod(data.shape[1:]))
            return data.id.get_offset() + row * row_bytes + row_bytes // 2
        info = data.id.get_chunk_info_by_coord((row, 0, 0, 0))
        return info.byte_offset + info.size // 2


@pytest.fixture
def project(tmp_path: Path) -> Project:
    project = Project(tmp_path)
    project.grow(10)
    project.fetch(None)
    return project


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_verify_names_the_shard_and_the_item(project: Project, compression: str):
    preprocess_layer(project.raw, project.pre, tiny_pipeline(), compression, store=None, name="tiny")
    assert verify_layer(project.pre) == []
    shard = project.pre / "00001.h5"
    _flip(shard, _row_offset(shard, "x", 2))
    problems = [str(p) for p in verify_layer(project.pre)]
    key = Layer.open(project.raw).item_keys()[3]  # raw shards of 1, 4, 3, 2 items: row 2 of shard 1 is the 4th
    assert problems[0] == f"{shard}: sha256 differs from the index (corrupt or modified)"
    assert problems[1].startswith(f"{shard}: item 2 (key {key[:12]}): ")
    assert len(problems) == 2


def test_verify_names_a_damaged_image_by_its_source_id(project: Project):
    shard = project.raw / "00001.h5"  # ids 101–104
    with h5py.File(shard, "r") as handle:
        start = handle["blob"].id.get_offset() + int(handle["offset"][1]) + 40
    _flip(shard, start)
    problems = [str(p) for p in verify_layer(project.raw)]
    assert any(p.startswith(f"{shard}: item 1 (id 102, key ") and "does not match its checksum" in p for p in problems)


def test_verify_reports_a_missing_shard_and_a_missing_layer(project: Project, tmp_path: Path):
    (project.raw / "00002.h5").unlink()
    assert [str(p) for p in verify_layer(project.raw)] == [f"{project.raw / '00002.h5'}: missing (listed in the index)"]
    assert "not a finished layer" in str(verify_layer(tmp_path / "nothing")[0])


def test_verify_command_exits_non_zero_and_names_the_item(project: Project, capsys):
    preprocess_layer(project.raw, project.pre, tiny_pipeline(), "none", store=None, name="tiny")
    assert main(["--params", str(project.root / "params.yaml"), "verify", str(project.raw), str(project.pre)]) == 0
    shard = project.pre / "00001.h5"
    _flip(shard, _row_offset(shard, "x", 3))
    assert main(["--params", str(project.root / "params.yaml"), "verify"]) == 1  # default: every layer under data/
    out = capsys.readouterr().out
    assert f"CORRUPT {shard}: item 3 (key " in out
    assert f"{project.raw}: ok" in out and f"{project.pre}: FAILED" in out


def test_verify_reports_a_damaged_index_instead_of_crashing(project: Project):
    index = project.raw / "index.json"
    index.write_text(index.read_text()[:-40])
    [problem] = verify_layer(project.raw)
    assert str(problem).startswith(f"{index}: unreadable index (JSONDecodeError")


@pytest.mark.slow
def test_the_repair_the_message_names_restores_damage_that_kept_size_and_mtime(project: Project, capsys):
    """`dvc checkout` trusts its stat cache and restores nothing here; the command the message names does."""
    from tests.e2e import run

    run(project.root, "git", "init", "-q")
    run(project.root, "dvc", "init", "-q")
    run(project.root, "dvc", "add", "-q", "data/raw")
    shard = project.raw / "00001.h5"
    status = shard.stat()
    _flip(shard, _row_offset(shard, "offset", 0))
    os.utime(shard, ns=(status.st_atime_ns, status.st_mtime_ns))
    with pytest.raises(LayerCorruptError) as refused:
        Layer.open(project.raw).check_shard(Layer.open(project.raw).shards[1])
    fix = str(refused.value).split("`dvc checkout --relink --force ")[1].split("`")[0]
    run(project.root, "dvc", "checkout", "data/raw")
    assert verify_layer(project.raw) != []  # plain checkout: nothing restored
    assert main(["verify", str(project.raw)]) == 1
    assert f"fix: `dvc checkout --relink --force {project.raw}`" in capsys.readouterr().out
    run(project.root, "dvc", "checkout", "--relink", "--force", fix)
    assert verify_layer(project.raw) == []


# -- trust round 2, item 7: index counts are checked against the shards on every read path ----------
def _edit_index(layer_dir: Path, change) -> None:
    import json

    path = layer_dir / "index.json"
    data = json.loads(path.read_text())
    change(data)
    os.chmod(path, 0o644)
    path.write_text(json.dumps(data, indent=1))


def test_a_wrong_shard_count_in_the_index_is_named_by_verify_and_refused_by_a_rebuild(project: Project):
    preprocess_layer(project.raw, project.pre, tiny_pipeline(), "none", store=None, name="tiny")
    _edit_index(project.raw, lambda data: data["shards"][1].update(n_items=2))  # shard 00001.h5 holds 4
    _edit_index(project.raw, lambda data: data.update(n_items=data["n_items"] - 2))  # the total agrees
    problems = [str(p) for p in verify_layer(project.raw)]
    assert problems[0] == f"{project.raw / '00001.h5'}: attribute n_items is 4, the index says 2"
    assert all(p.endswith("has 4 rows, the index says 2") for p in problems[1:])  # each column, no stray IndexError
    # A forced rebuild of the downstream layer reads the raw shards again: refused, not built from 2 of 4 rows
    with pytest.raises(LayerCorruptError, match=r"index.json says 00001.h5 holds 2 items, the shard itself holds 4"):
        preprocess_layer(project.raw, project.pre, tiny_pipeline(), "none", store=None, name="tiny")


def test_a_count_remembered_by_the_stores_stamps_still_refuses_an_edited_index(project: Project, tmp_path: Path):
    # The rerun path remembers each shard's header count beside its sha256 (no HDF5 open per shard); the
    # remembered count is the file's, so an index edited afterwards is compared with it and refused.
    store = store_at(tmp_path / "store")
    preprocess_layer(project.raw, project.pre, tiny_pipeline(), "none", store=store, name="tiny")
    assert read_item_count(project.raw / "00001.h5") == 4
    _edit_index(project.raw, lambda data: data["shards"][1].update(n_items=2))
    _edit_index(project.raw, lambda data: data.update(n_items=data["n_items"] - 2))
    with pytest.raises(LayerCorruptError, match=r"index.json says 00001.h5 holds 2 items, the shard itself holds 4"):
        preprocess_layer(project.raw, project.pre, tiny_pipeline(), "none", store=store, name="tiny")


def test_a_wrong_total_count_in_the_index_is_named(project: Project):
    _edit_index(project.raw, lambda data: data.update(n_items=999))
    problems = [str(p) for p in verify_layer(project.raw)]
    assert len(problems) == 1 and "says the layer holds 999 items, its shards list 10" in problems[0]
    with pytest.raises(LayerCorruptError, match="says the layer holds 999 items"):
        Layer.open(project.raw)
