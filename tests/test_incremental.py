"""Derived layers through the shard store: only new work is done, and the bytes never depend on history."""
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from evalstack.cache.incremental import describe_key_change
from evalstack.cli.verify import verify_layer
from evalstack.core.layers import Layer, LayerCorruptError
from tests.layers import Project, digests, store_at


def test_second_build_reuses_every_shard_byte_for_byte(tmp_path: Path):
    project, store = Project(tmp_path), store_at(tmp_path / "store")
    pre, pred = project.build(10, store)
    assert (pre.counts["shards_computed"], pre.counts["items_preprocessed"]) == (4, 10)  # raw shards of 1, 4, 3, 2
    assert pred.counts["forward_passes"] == 10
    before = digests(project.raw, project.pre, project.pred)
    pre, pred = project.build(10, store)
    assert (pre.counts["shards_computed"], pre.counts["shards_reused"], pre.counts["items_preprocessed"]) == (0, 4, 0)
    assert (pred.counts["shards_reused"], pred.counts["forward_passes"]) == (4, 0)
    assert digests(project.raw, project.pre, project.pred) == before


def test_a_rebuild_does_not_reread_unchanged_upstream_shards(tmp_path: Path):
    """Stage checks trust a file whose inode, size and mtime are unchanged since it was hashed (as
    `dvc status` does), so a rebuild reads no unchanged shard; `verify` still reads every byte."""
    project, store = Project(tmp_path), store_at(tmp_path / "store")
    project.build(10, store)
    shard = project.raw / "00001.h5"
    status = shard.stat()
    _flip_byte(shard)  # bit rot: the bytes change, the metadata does not
    os.utime(shard, ns=(status.st_atime_ns, status.st_mtime_ns))
    pre, pred = project.preprocess(store), project.infer(store)
    assert (pre.counts["shards_reused"], pred.counts["shards_reused"]) == (4, 4)  # no shard was re-read
    assert any("00001.h5" in str(problem) for problem in verify_layer(project.raw))
    os.utime(shard)  # any write moves the mtime: the stage hashes the shard again and refuses it
    with pytest.raises(LayerCorruptError, match="00001.h5 does not match the sha256"):
        project.preprocess(store)


def test_a_damaged_upstream_shard_with_its_stat_kept_is_read_before_anything_is_computed_from_it(tmp_path: Path):
    """The stat bet lets a reuse skip an unchanged file, but what a stage computes it stores under the upstream
    sha256 the index records. Computed from a damaged file whose stat was kept, it went into the shard store under
    the undamaged shard's address, and a clean clone sharing the store reused it, exit 0 (found by a hunt). A
    shard that is computed now has its upstream read in full first, and what was read replaces the stamp."""
    project, store = Project(tmp_path), store_at(tmp_path / "store")
    project.build(10, store)
    shard = project.pre / "00001.h5"
    status = shard.stat()
    _flip_byte(shard)
    os.utime(shard, ns=(status.st_atime_ns, status.st_mtime_ns))
    store = store_at(tmp_path / "store")  # the next stage's process (one reads each file at most once)
    recorded = Layer.open(project.pre).index.shards[1].sha256

    def computed_from_it() -> list[str]:
        return sorted(entry.address for entry in store.entries() if entry.upstream == recorded)

    first_weights = computed_from_it()
    with pytest.raises(LayerCorruptError, match="00001.h5 does not match the sha256"):
        project.infer(store, weights=b"weights2")  # other weights: every prediction shard is computed
    # the read runs beside the computation: what was computed from the damaged bytes was not kept
    assert len(first_weights) == 1 and computed_from_it() == first_weights
    with pytest.raises(LayerCorruptError, match="00001.h5 does not match"):  # the stamp now holds what was read
        project.infer(store)


def test_a_stored_shard_removed_before_it_is_taken_is_computed_from_a_read_upstream(tmp_path: Path, monkeypatch):
    """A hit whose record another checkout's gc removes between the lookup and its use is computed after all:
    from its upstream read in full too (found by a review of the fix above)."""
    import evalstack.cache.incremental as incremental

    project = Project(tmp_path)
    project.build(10, store_at(tmp_path / "store"))
    shard = project.pre / "00001.h5"
    status = shard.stat()
    _flip_byte(shard)
    os.utime(shard, ns=(status.st_atime_ns, status.st_mtime_ns))
    taken = incremental._register_reused

    def removed_meanwhile(store, job, writer):
        if job.upstream.name == "00001.h5":
            store.remove(store.get(job.address))
            return None
        return taken(store, job, writer)

    monkeypatch.setattr(incremental, "_register_reused", removed_meanwhile)
    with pytest.raises(LayerCorruptError, match="00001.h5 does not match the sha256"):
        project.infer(store_at(tmp_path / "store"))



def _damage_keeping_stat(path: Path, offset: int) -> None:
    status = path.stat()
    _flip_byte(path, offset)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def test_a_damaged_input_that_crashes_its_computation_in_a_pool_is_reported_as_damage(tmp_path: Path, monkeypatch):
    """The inputs are read beside the computation, so a pool can fail on the damaged bytes (no HDF5 signature)
    before their read got there: the user is still told which file is damaged and how to restore it, not
    h5py's "file signature not found" (found by a review)."""
    import evalstack.core.hashstamps as hashstamps
    from evalstack.cache.executors import ProcessExecutor
    from evalstack.models.inference import infer_layer
    from tests.layers import numpy_model

    project = Project(tmp_path)
    project.build(10, store_at(tmp_path / "store"))
    _damage_keeping_stat(project.pre / "00003.h5", 0)  # the last job's input: read last
    read = hashstamps.sha256_file
    monkeypatch.setattr(hashstamps, "sha256_file", lambda path: (time.sleep(0.5), read(path))[1])  # large shards
    with pytest.raises(LayerCorruptError, match="00003.h5 does not match the sha256"):
        infer_layer(project.pre, project.pred, numpy_model(tmp_path / "models", b"weights2"), batch_size=3,
                    store=store_at(tmp_path / "store"), executor=ProcessExecutor(2, worth_seconds=0))


def test_a_damaged_input_stops_the_pool_computing_beside_its_read(tmp_path: Path):
    """The read that finds the damage ends the build at once: the pool's workers are stopped, not left computing
    the remaining shards until the interpreter exits (or for as long as a notebook keeps the error)."""
    import multiprocessing

    from evalstack.cache.executors import ProcessExecutor
    from evalstack.models.inference import infer_layer
    from tests.layers import SlowNumpyAdapter, numpy_model

    project = Project(tmp_path)
    project.build(10, store_at(tmp_path / "store"))
    _damage_keeping_stat(project.pre / "00000.h5", -200)  # the smallest shard: the pool's probe, computed first
    model = numpy_model(tmp_path / "models", b"weights2")
    slow = SlowNumpyAdapter(replace(model.spec, options={**model.spec.options, "delay": 2}))
    with pytest.raises(LayerCorruptError, match="00000.h5 does not match the sha256"):
        infer_layer(project.pre, project.pred, slow, batch_size=3, store=store_at(tmp_path / "store"),
                    executor=ProcessExecutor(2, worth_seconds=1e-9))
    assert multiprocessing.active_children() == []

def test_added_items_recompute_only_the_new_and_the_filled_shard(tmp_path: Path):
    project, store = Project(tmp_path / "incremental"), store_at(tmp_path / "store")
    project.build(10, store)  # raw shards of 1, 4, 3, 2 items (content-defined ends)
    pre, pred = project.build(13, store)  # 1, 4, 3 (kept as they are), 3 (the partial 2 filled up), 2 (new)
    counts = pre.counts
    assert (counts["shards_computed"], counts["shards_reused"], counts["items_preprocessed"]) == (2, 3, 5)
    assert pred.counts["forward_passes"] == 5
    reasons = {s["name"]: s["reasons"] for s in pred.record["shards"] if s["computed"]}
    assert reasons == {"00003.h5": ["upstream shard changed (2 → 3 items)"], "00004.h5": ["new upstream shard (2 items)"]}
    # Built from nothing, the same 13 items give the same files: the layers carry no history.
    fresh = Project(tmp_path / "fresh")
    fresh.build(13, store_at(tmp_path / "store2"))
    assert digests(fresh.raw, fresh.pre, fresh.pred) == digests(project.raw, project.pre, project.pred)
    # From scratch, with no store at all, on the same raw layer: the same bytes, index files included.
    scratch = Project(tmp_path / "scratch")
    shutil.copytree(project.raw, scratch.raw)
    scratch.preprocess(store=None), scratch.infer(store=None)
    assert digests(scratch.raw, scratch.pre, scratch.pred) == digests(project.raw, project.pre, project.pred)


def test_toggling_a_param_back_recomputes_nothing(tmp_path: Path):
    project, store = Project(tmp_path), store_at(tmp_path / "store")
    project.build(10, store)
    first = digests(project.pre, project.pred)
    b = project.preprocess(store, size=12)
    assert b.counts["shards_computed"] == 4
    assert b.record["key_changes"] == ["pipeline tiny: params.resize: 8 → 12"]
    a = project.preprocess(store, size=8)
    assert (a.counts["shards_computed"], a.counts["items_preprocessed"], a.counts["shards_reused"]) == (0, 0, 4)
    assert a.record["key_changes"] == ["pipeline tiny: params.resize: 12 → 8"]
    assert project.infer(store).counts["forward_passes"] == 0
    assert digests(project.pre, project.pred) == first


def test_changed_weights_are_explained_and_recomputed(tmp_path: Path):
    project, store = Project(tmp_path), store_at(tmp_path / "store")
    project.build(6, store)
    build = project.infer(store, weights=b"weights2")
    assert build.counts["forward_passes"] == 6
    [change] = build.record["key_changes"]
    assert change.startswith("model m: weights changed (") and " → " in change
    assert all(s["reasons"] == ["key changed (see above)"] for s in build.record["shards"])


def test_key_change_names_the_pipeline_inside_a_predictions_key():
    old = {"model": {"weights_sha256": "a" * 64}, "pipeline": {"params": {"resize": 454}}}
    new = {"model": {"weights_sha256": "a" * 64}, "pipeline": {"params": {"resize": 384}}}
    labels = {"model": "model m", "pipeline": "pipeline pad_nn"}
    assert describe_key_change(old, new, labels) == ["pipeline pad_nn: params.resize: 454 → 384"]


def _flip_byte(path: Path, offset: int = -200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def test_infer_refuses_a_corrupt_upstream_shard_even_when_its_result_is_stored(tmp_path: Path):
    project, store = Project(tmp_path), store_at(tmp_path / "store")
    project.build(10, store)
    _flip_byte(project.pre / "00001.h5")
    with pytest.raises(LayerCorruptError, match=r"preprocessed/tiny/00001.h5 does not match the sha256"):
        project.infer(store)
    with pytest.raises(LayerCorruptError, match="evalstack verify"):
        project.infer(None)


def test_a_damaged_store_entry_is_recomputed_not_copied(tmp_path: Path):
    project, store = Project(tmp_path), store_at(tmp_path / "store")
    project.build(10, store)
    before = digests(project.pre)
    layer = Layer.open(project.pre)
    entry = next(e for e in store.entries() if e.sha256 == layer.shards[0].sha256)
    _flip_byte(store.shard_path(entry.address))
    build = project.preprocess(store)
    assert (build.counts["shards_computed"], build.counts["shards_reused"]) == (1, 3)
    assert digests(project.pre) == before and verify_layer(project.pre) == []
    assert store.verify() == []  # the damaged entry was replaced by the recomputed shard


def test_hardlinked_output_edited_in_place_never_leaks_into_a_build(tmp_path: Path):
    project, store = Project(tmp_path), store_at(tmp_path / "store", link="hardlink")
    project.build(10, store)
    project.preprocess(store)  # now the outputs are hardlinks of store entries
    shard = project.pre / "00000.h5"
    assert shard.stat().st_nlink == 2
    before = digests(project.pre)
    with open(shard, "r+b") as handle:  # an in-place edit (as root, read-only bits do not stop it)
        handle.seek(-200, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    build = project.preprocess(store)
    assert build.counts["shards_computed"] == 1
    assert digests(project.pre) == before


def test_a_layer_built_without_a_store_seeds_one(tmp_path: Path):
    project = Project(tmp_path)
    project.build(10, store=None)
    store = store_at(tmp_path / "store")
    build = project.preprocess(store)
    assert build.counts["shards_seeded"] == 4
    assert (build.counts["shards_computed"], build.counts["shards_reused"]) == (0, 4)
