"""`evalstack verify --cache`: a damaged DVC cache object is named, and the printed repair works (issue 24, item 3).

DVC itself reports nothing: `dvc status` compares the workspace with dvc.lock, and `dvc checkout`
copies a damaged object back without hashing it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e import env, run

WRITE = "import pathlib; d = pathlib.Path('data/out'); d.mkdir(parents=True, exist_ok=True); " \
        "[(d / f'{i}.bin').write_bytes(bytes(range(256)) * (i + 4)) for i in range(3)]"


def dvc_project(root: Path) -> Path:
    root.mkdir()
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "dvc", "init", "-q")
    run(root, "dvc", "config", "core.analytics", "false")
    (root / "params.yaml").write_text("{}\n")
    run(root, "dvc", "stage", "add", "-q", "-n", "make", "-o", "data/out", f'{sys.executable} -c "{WRITE}"')
    run(root, "dvc", "repro", "-q")
    return root


def verify_cache(root: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "evalstack.cli", "--params", str(root / "params.yaml"), "verify", "--cache"]
    return subprocess.run(command, cwd=root, env=env(root), capture_output=True, text=True)


def flip_keeping_size_and_mtime(path: Path) -> None:
    stat = path.stat()
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def object_of(root: Path, relpath: str) -> Path:
    import hashlib

    md5 = hashlib.md5((root / relpath).read_bytes()).hexdigest()
    return root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]


def test_a_damaged_cache_object_is_named_and_the_recompute_repair_works(tmp_path: Path):
    root = dvc_project(tmp_path / "project")
    assert verify_cache(root).stdout.startswith("DVC cache: ok (4 objects re-hashed)")  # the listing + 3 files
    damaged = object_of(root, "data/out/1.bin")
    flip_keeping_size_and_mtime(damaged)
    assert "data/out" not in run(root, "dvc", "status").stdout  # DVC sees nothing
    result = verify_cache(root)
    assert result.returncode == 1
    assert f"CORRUPT {damaged}: md5 of its bytes is" in result.stdout
    assert "it holds data/out/1.bin of stage make (dvc.lock in .)" in result.stdout
    assert "DVC cache: 1 of 4 objects damaged; do not `dvc push` them." in result.stdout
    assert f"rm -f {damaged}" in result.stdout and "dvc repro -f -s make" in result.stdout
    # `dvc repro -f` alone keeps the damaged object (an object of that name is there): the repair removes it first
    run(root, "dvc", "repro", "-q", "-f", "-s", "make")
    assert verify_cache(root).returncode == 1
    damaged.unlink()
    run(root, "dvc", "repro", "-q", "-f", "-s", "make")
    assert verify_cache(root).stdout.startswith("DVC cache: ok (4 objects re-hashed)")


def test_the_pull_repair_restores_an_intact_object_from_the_remote(tmp_path: Path):
    root = dvc_project(tmp_path / "project")
    run(root, "dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote"))
    run(root, "dvc", "push", "-q")
    damaged = object_of(root, "data/out/2.bin")
    flip_keeping_size_and_mtime(damaged)
    (root / "data/out/2.bin").unlink()
    run(root, "dvc", "checkout", "-q")  # copies the damaged object back without a word
    assert object_of(root, "data/out/2.bin") != damaged
    assert verify_cache(root).returncode == 1
    damaged.unlink()
    run(root, "dvc", "pull", "-q", "make")
    assert verify_cache(root).returncode == 0
    run(root, "dvc", "checkout", "-q", "--relink", "--force")
    assert object_of(root, "data/out/2.bin") == damaged and damaged.exists()
