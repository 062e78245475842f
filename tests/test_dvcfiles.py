"""Reading dvc.lock and DVC's cache layout (the e2e tests drive the real dvc CLI)."""
import hashlib
import json
from pathlib import Path

from evalstack.cache.dvcfiles import cache_dir, cache_file, find_repo_root, locked_layer_for, locked_outs
from tests.layers import Project


def test_cache_dir_follows_dvc_config(tmp_path: Path):
    (tmp_path / ".dvc").mkdir()
    assert cache_dir(tmp_path) == tmp_path / ".dvc/cache"
    (tmp_path / ".dvc/config").write_text("[core]\n    remote = s\n['remote \"s\"']\n    url = /r\n[cache]\n    dir = ../shared-cache\n")
    assert cache_dir(tmp_path) == (tmp_path / "shared-cache").resolve()
    (tmp_path / ".dvc/config.local").write_text("[cache]\n    dir = /elsewhere\n")
    assert cache_dir(tmp_path) == Path("/elsewhere")


def test_locked_layer_is_read_from_the_cache_when_the_workspace_lacks_it(tmp_path: Path):
    project = Project(tmp_path)
    project.grow(6)
    project.fetch(None)
    (tmp_path / ".dvc").mkdir()
    cache = tmp_path / ".dvc/cache"
    listing = []
    for path in sorted(project.raw.iterdir()):  # lay the layer out as `dvc commit` would (md5-addressed)
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        cache_file(cache, md5).parent.mkdir(parents=True, exist_ok=True)
        cache_file(cache, md5).write_bytes(path.read_bytes())
        listing.append({"md5": md5, "relpath": path.name})
    manifest = json.dumps(listing).encode()
    dir_md5 = hashlib.md5(manifest).hexdigest() + ".dir"
    cache_file(cache, dir_md5).parent.mkdir(parents=True, exist_ok=True)
    cache_file(cache, dir_md5).write_bytes(manifest)
    (tmp_path / "dvc.lock").write_text(
        f"schema: '2.0'\nstages:\n  fetch:\n    cmd: x\n    outs:\n    - path: data/raw\n      md5: {dir_md5}\n"
    )
    assert [out.path for out in locked_outs(tmp_path)] == ["data/raw"]
    assert find_repo_root(project.raw / "nested") == tmp_path
    for shard in project.raw.glob("*.h5"):
        shard.unlink()
    locked = locked_layer_for(project.raw)
    assert locked is not None and locked.from_cache
    assert [s.name for s in locked.index.shards] == ["00000.h5", "00001.h5", "00002.h5"]  # 6 items: 1, 4, 1
    assert all(str(path).startswith(str(cache)) for path in locked.files.values())
