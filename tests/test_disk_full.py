"""A full disk: under store.dir the stage goes on without caching (one warning naming the store);
under the output folder the stage fails naming the folder and the space needed.

Issue 15, finding 12. The disk is made full at the one write call every publish goes through
(`evalstack.core.atomic`), which raises OSError(ENOSPC) as a real full disk does.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from evalstack.core.layers import INDEX_NAME
from tests.layers import Project, digests, store_at
from tests.test_atomic import fill_disk


def test_a_full_store_degrades_to_not_caching_with_one_warning(tmp_path: Path, monkeypatch, capsys):
    reference = Project(tmp_path / "reference")
    reference.build(9, None)  # the same layers without any store
    project = Project(tmp_path / "project")
    store = store_at(tmp_path / "store")
    fill_disk(monkeypatch, tmp_path / "store")
    project.build(9, store)  # fetch, preprocess and infer all finish
    err = capsys.readouterr().err.replace("\r", "\n")  # tqdm redraws with carriage returns
    warnings = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert warnings == [f"WARNING the shard store {store.directory} is out of disk space (No space left on device): "
                        "this run keeps no more shards there. Results are not affected; a later run may recompute "
                        "what was not kept. Free space (`evalstack gc --max-bytes N`) or point store.dir at a larger "
                        "disk; `evalstack doctor` shows free space."]
    assert digests(project.raw, project.pre, project.pred) == digests(reference.raw, reference.pre, reference.pred)
    assert list(store.entries()) == []


def test_a_full_output_disk_fails_naming_the_folder_and_the_space_needed(tmp_path: Path, monkeypatch):
    from evalstack.core.atomic import DiskFullError

    project = Project(tmp_path / "project")
    store = store_at(tmp_path / "store")
    project.grow(9)
    project.fetch(store)
    with monkeypatch.context() as patch:
        fill_disk(patch, project.pre.parent, room=100)  # the disk holding the output (its staging folder too)
        with pytest.raises(DiskFullError, match=rf"no space left on the disk holding {project.pre}: writing "
                                                r"00000\.h5 needs [0-9.]+ kB and [0-9.]+ [kMGT]?B are free; .*`evalstack doctor`"):
            project.preprocess(store)
    assert not (project.pre / INDEX_NAME).exists()  # nothing half-written looks like a layer
    assert not list(project.pre.glob(".*.tmp"))
    build = project.preprocess(store)  # space again: the stage completes
    assert build.counts["shards_computed"] == len(build.index.shards) and (project.pre / INDEX_NAME).exists()
